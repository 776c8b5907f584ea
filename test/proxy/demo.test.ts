import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';
import { describeOnHost } from '../support/host.js';
import { REPO } from '../support/paths.js';

describeOnHost('npm run demo, the main job', ['root', 'criu', 'workload'], () => {
  for (const mib of [64, 1024]) {
    it(`moves a ${mib} MiB workload between two namespaced hosts over TLS, pre-copy and lazy, each time the same process with its memory`, async () => {
      const { stdout } = await promisify(execFile)(`${REPO}/scripts/demo`, ['--mib', String(mib)], { maxBuffer: 16 * 1024 * 1024 });
      const result = JSON.parse(stdout.trim().split('\n').pop()!) as {
        runs: Array<{ mode: string; memoryIntact: boolean; continuedOnHostB: boolean; haul: { result: string; pages: number } }>;
      };
      expect(result.runs.map((run) => run.mode)).toEqual(['pre-copy', 'lazy']);
      for (const run of result.runs) {
        expect(run.haul.result).toBe('restored');
        expect(run.haul.pages).toBeGreaterThanOrEqual((mib * 1024 * 1024) / 4096);
        expect(run.memoryIntact).toBe(true);
        expect(run.continuedOnHostB).toBe(true);
      }
    }, 600_000);
  }
});
