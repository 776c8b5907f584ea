import { mkdirSync } from 'node:fs';
import { afterEach, expect } from 'vitest';
import { scratchDir } from './scratch.js';
import { LocalWorkload, expectedChecksum, reportFrom, stopWorkload, type WorkloadReport } from './workload.js';

/** What every CRIU migration test starts from: a running, verified workload and two empty image dirs. */
export interface MigrationScene {
  readonly source: string;
  readonly destination: string;
  readonly workload: LocalWorkload;
  /** The workload's report before anything happened to it; its checksum is the intact one. */
  readonly before: WorkloadReport;
  /** Registers something to undo after the test (run in reverse order, before the scene is removed). */
  defer(cleanup: () => void): void;
  /**
   * Asserts the workload came back as itself: same pid, every page intact, still beating since
   * `frozenAt`; returns its report for further checks.
   */
  expectContinued(frozenAt: bigint): Promise<WorkloadReport>;
}

/** Call inside a describe block; each started scene is torn down after its test. */
export function useMigrationScenes(): { start(label: string, mib: number, options?: { readonly ownNetworkNamespace?: boolean }): Promise<MigrationScene> } {
  const cleanups: Array<() => void> = [];
  afterEach(() => cleanups.splice(0).reverse().forEach((cleanup) => cleanup()));
  const defer = (cleanup: () => void): void => void cleanups.push(cleanup);
  return {
    async start(label, mib, options = {}) {
      const scratch = scratchDir(label);
      defer(scratch.remove);
      const source = `${scratch.path}/source`;
      const destination = `${scratch.path}/destination`;
      mkdirSync(source);
      mkdirSync(destination);
      const workload = await LocalWorkload.start(`${scratch.path}/workload`, mib, options);
      defer(() => stopWorkload(workload.pid));
      const before = await workload.report();
      expect(before.checksum).toBe(await expectedChecksum(mib));
      const expectContinued = async (frozenAt: bigint): Promise<WorkloadReport> => {
        const after = await reportFrom(workload.dir, frozenAt);
        expect(after.pid).toBe(workload.pid);
        expect(after.checksum).toBe(before.checksum);
        expect(after.tick).toBeGreaterThan(before.tick);
        return after;
      };
      return { source, destination, workload, before, defer, expectContinued };
    },
  };
}
