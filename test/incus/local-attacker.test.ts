import { afterAll, afterEach, expect, it } from 'vitest';
import { MigrationRecords } from '../../plugin/migration-records.js';
import { describeOnHost } from '../support/host.js';
import { LocalAttacker } from '../support/local-attacker.js';
import { TestContainer, CLEANUP_MS, deleteAll } from '../support/testbed.js';
import { expectedChecksum, realtimeNs } from '../support/workload.js';

const WORKLOAD = { dir: '/run/big', mib: 64 };

describeOnHost('a local user racing haul to its loopback listeners during incus move', ['root', 'criu', 'testbed'], () => {
  const containers: TestContainer[] = [];
  let attacker: LocalAttacker | undefined;
  afterEach(async () => void (await attacker?.stop()));
  afterAll(() => deleteAll(containers), CLEANUP_MS);

  for (const mode of ['pre-copy', 'lazy'] as const) {
    it(`changes nothing (${mode}): the move succeeds, the container keeps its memory, one copy runs`, async () => {
      const container = await TestContainer.launch('busybox', 'src', '/tmp/counter', ['--config', `user.haul.mode=${mode}`]);
      containers.push(container);
      await container.exec(['haul-workload', 'start', '--dir', WORKLOAD.dir, '--mib', String(WORKLOAD.mib)]);
      const before = await container.workloadReport(WORKLOAD.dir);
      expect(before.checksum).toBe(await expectedChecksum(WORKLOAD.mib));

      // lazy: CRIU's lazy page server listens on loopback for a few ms only, and an attacker on a
      // busy 2-core machine may be off its core all that time; every move (dst, then back) must
      // come out intact, and one at least must have run the race
      const hosts = ['dst', 'src', 'dst'] as const;
      for (const [attempt, to] of hosts.entries()) {
        const from = to === 'dst' ? 'src' : 'dst';
        const records = new MigrationRecords(`/var/lib/haul-testbed/${from}/haul/agent/migrations.jsonl`);
        const sourceRecords = async (): Promise<Array<{ result: string }>> => (await records.all()).filter((r) => r.instance === container.name && r.role === 'source');
        const recordsBefore = (await sourceRecords()).length;
        attacker = await LocalAttacker.start();
        const movedAt = realtimeNs();
        await container.moveTo(to);
        const attack = await attacker.stop();
        attacker = undefined;

        expect(await container.whereabouts()).toEqual(to === 'dst' ? { src: undefined, dst: 'RUNNING' } : { src: 'RUNNING', dst: undefined });
        const after = await container.workloadReport(WORKLOAD.dir, movedAt);
        expect(after.pid).toBe(before.pid);
        expect(after.checksum).toBe(before.checksum);
        expect(after.tick).toBeGreaterThan(before.tick);
        // this move's own record (an earlier move from the same host left one before it)
        await expect.poll(async () => { const all = await sourceRecords(); return all.length > recordsBefore ? all.at(-1)?.result : 'not recorded yet'; }, { timeout: 30_000 }).toBe('moved');
        if (mode === 'pre-copy') break;
        if (attack.portsSeen.length > 0) {
          // CRIU's lazy page server listened on loopback, and the attacker went for it
          expect(attack.connected + attack.refused).toBeGreaterThan(0);
          break;
        }
        expect(attempt, "the attacker never saw CRIU's lazy page server listen").toBeLessThan(hosts.length - 1);
      }
    }, 600_000);
  }
});
