import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { afterAll, expect, it } from 'vitest';
import { IN_FLIGHT_FILE, type MigrationProgress } from '../../plugin/in-flight.js';
import { MigrationRecords, type MigrationRecord } from '../../plugin/migration-records.js';
import { HAUL_CLI } from '../support/build-cli.js';
import { describeOnHost } from '../support/host.js';
import { NativeMoveDefect, TestContainer, type TestHost, CLEANUP_MS, deleteAll } from '../support/testbed.js';
import { expectedChecksum, realtimeNs } from '../support/workload.js';

/** Where `scripts/testbed up` keeps each host's agent state. */
const records = (host: TestHost): MigrationRecords => new MigrationRecords(`/var/lib/haul-testbed/${host}/haul/agent/migrations.jsonl`);

async function recordsOf(host: TestHost, instance: string): Promise<MigrationRecord[]> {
  return (await records(host).all()).filter((record) => record.instance === instance);
}

function readInFlight(host: TestHost): MigrationProgress[] {
  try {
    return JSON.parse(readFileSync(`/var/lib/haul-testbed/${host}/haul/agent/${IN_FLIGHT_FILE}`, 'utf8')) as MigrationProgress[];
  } catch {
    return [];
  }
}

/**
 * Page data (not logs) left in the agent's directories for migrations that arrived since `sinceMs`
 * (each directory is named after the time it was made: leftovers of earlier runs are not this test's).
 */
function leftPageData(host: TestHost, sinceMs: number): string[] {
  const incoming = `/var/lib/haul-testbed/${host}/haul/agent/incoming`;
  return readdirSync(incoming)
    .filter((dir) => Number(dir.split('-')[0]) >= sinceMs)
    .flatMap((dir) => readdirSync(`${incoming}/${dir}`).map((name) => `${dir}/${name}`))
    .filter((path) => /\.(img|bin|tar)$/.test(path));
}

const COUNTER = { dir: '/run/haul', mib: 1 };
const BIG = { dir: '/run/big', mib: 256 };

describeOnHost('incus move through haul (the test bed routes every move through its agents)', ['root', 'criu', 'testbed'], () => {
  const containers: TestContainer[] = [];
  afterAll(() => deleteAll(containers), CLEANUP_MS);

  for (const mode of ['pre-copy', 'lazy'] as const) {
  for (const pool of ['default', 'dir']) {
    for (const workload of [COUNTER, BIG]) {
      it(`moves a busybox container with ${workload.mib} MiB (${pool} pool) to dst and back, ${mode}: same process, memory intact, pages only through haul`, async () => {
        const container = await TestContainer.launch('busybox', 'src', '/tmp/counter', ['--storage', pool, '--config', `user.haul.mode=${mode}`]);
        containers.push(container);
        if (workload !== COUNTER) await container.exec(['haul-workload', 'start', '--dir', workload.dir, '--mib', String(workload.mib)]);
        const intact = await expectedChecksum(workload.mib);
        let before = await container.workloadReport(workload.dir);
        expect(before.checksum).toBe(intact);
        let counter = await container.readCounter();

        for (const [from, to] of [['src', 'dst'], ['dst', 'src']] satisfies Array<[TestHost, TestHost]>) {
          const movedAt = realtimeNs();
          const moveStartedMs = Date.now();
          // what `haul status` on the receiving host shows meanwhile
          const seenThere = new Set<string>();
          const watching = setInterval(() => {
            for (const entry of readInFlight(to)) if (entry.instance === container.name) seenThere.add(`${entry.role} ${entry.pages > 0 ? 'with pages' : 'no pages yet'}`);
          }, 100);
          await container.moveTo(to).finally(() => clearInterval(watching));
          if (workload === BIG) expect([...seenThere]).toContain('destination with pages');
          expect(await container.whereabouts()).toEqual(to === 'dst' ? { src: undefined, dst: 'RUNNING' } : { src: 'RUNNING', dst: undefined });
          const after = await container.workloadReport(workload.dir, movedAt);
          expect(after.pid).toBe(before.pid);
          expect(after.checksum).toBe(intact);
          expect(after.tick).toBeGreaterThan(before.tick);
          await new Promise((resolve) => setTimeout(resolve, 1100));
          const counterAfter = await container.readCounter();
          expect(counterAfter).toBeGreaterThan(counter);

          // the memory went through haul: the source streamed every page, none into Incus' checkpoint dir,
          // and the destination placed them for the restore
          // (lazy: the source's record is written once the last page has come and Incus reported the restore)
          await expect.poll(async () => (await recordsOf(from, container.name)).filter((r) => r.role === 'source').length, { timeout: 30_000 }).toBe(1);
          const sent = (await recordsOf(from, container.name)).filter((r) => r.role === 'source');
          expect(sent.at(-1)).toMatchObject({ result: 'moved', mode, peer: to, checkpointPageFiles: 0 });
          // the downtime as the source saw it: from the freeze until the destination reported the restore
          expect(sent.at(-1)!.downtimeMs).toBeGreaterThan(0);
          expect(sent.at(-1)!.downtimeMs).toBeLessThanOrEqual(sent.at(-1)!.totalMs);
          expect(sent.at(-1)!.pages).toBeGreaterThanOrEqual((workload.mib * 1024 * 1024) / 4096);
          await expect.poll(async () => (await recordsOf(to, container.name)).filter((r) => r.role === 'destination').at(-1)?.id, { timeout: 30_000 }).toBe(sent.at(-1)!.id);
          expect((await recordsOf(to, container.name)).filter((r) => r.role === 'destination').at(-1)).toMatchObject({ result: 'restored', mode, peer: from, pages: sent.at(-1)!.pages });
          // and once the move is over, neither agent keeps its pages (only logs)
          await expect.poll(() => leftPageData(to, moveStartedMs), { timeout: 30_000 }).toEqual([]);
          before = after;
          counter = counterAfter;
        }
        expect((await recordsOf('src', container.name)).filter((r) => r.role === 'source')).toHaveLength(1);
        // what an operator sees: nothing in progress any more, and this move among the recent ones
        const { stdout } = await promisify(execFile)(process.execPath, [HAUL_CLI, '--state-dir', '/var/lib/haul-testbed/src/haul', 'status', '--json']);
        const status = JSON.parse(stdout) as { inProgress: unknown[]; recent: MigrationRecord[] };
        expect(status.inProgress).toEqual([]);
        expect(status.recent.filter((r) => r.instance === container.name)).toEqual(
          expect.arrayContaining([expect.objectContaining({ source: 'src', target: 'dst', mode, result: 'moved' }), expect.objectContaining({ source: 'dst', target: 'src', mode, result: 'restored' })]),
        );
      }, 600_000);
    }
  }
  }

  it('leaves an instance with user.haul.mode=off to the native path', async () => {
    const container = await TestContainer.launch('busybox', 'src', '/tmp/counter', ['--config', 'user.haul.mode=off']);
    containers.push(container);
    // natively, the known defects of the native path may show (see NativeMoveDefect); either way haul stayed out
    const moved = await container.moveTo('dst').then(() => true, (error: unknown) => {
      if (!(error instanceof NativeMoveDefect)) throw error;
      return false;
    });
    if (moved) expect(await container.whereabouts()).toEqual({ src: undefined, dst: 'RUNNING' });
    expect(await recordsOf('src', container.name)).toEqual([expect.objectContaining({ result: 'passed-through', mode: 'off' })]);
    expect(await recordsOf('dst', container.name)).toEqual([]);
  }, 600_000);
});
