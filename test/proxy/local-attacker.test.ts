import { afterEach, expect, it } from 'vitest';
import { ImageCache } from '../../proxy/image-cache.js';
import { migrateLazy, migratePreCopy } from '../../proxy/image-proxy.js';
import { describeOnHost } from '../support/host.js';
import { hostApp } from '../support/link-hosts.js';
import { LocalAttacker, type AttackReport } from '../support/local-attacker.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { CRIU_ON_SECOND_HOST, holdRestoredProcesses } from '../support/second-host.js';
import { realtimeNs, reportFrom } from '../support/workload.js';

describeOnHost('a local user racing haul to its loopback listeners during haul migrate', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();
  let attacker: LocalAttacker | undefined;
  afterEach(async () => void (await attacker?.stop()));
  const LAZY_TRIES = 3;

  async function migrateUnderAttack(mode: 'pre-copy' | 'lazy', attempt: number): Promise<AttackReport> {
    const { destination, workload, defer, before } = await scenes.start(`attacked-${mode}-${attempt}`, 32);
    holdRestoredProcesses(destination, defer);
    const cache = await ImageCache.start({ address: '127.0.0.1', port: 0, dir: `${destination}/cache`, insecure: true, application: hostApp('destination'), criuBinary: CRIU_ON_SECOND_HOST });
    defer(() => void cache.close());
    attacker = await LocalAttacker.start();

    const frozenAt = realtimeNs();
    const options = { pid: workload.pid, to: `ws://127.0.0.1:${cache.port}`, insecure: true, application: hostApp('source') } as const;
    const summary = mode === 'lazy' ? await migrateLazy(options) : await migratePreCopy(options);
    const attack = await attacker.stop();
    attacker = undefined;

    // the source copy ended because the migration succeeded, not because someone said CLOSE
    await workload.exited;
    const after = await reportFrom(workload.dir, frozenAt);
    expect(summary.restoredPid).toBeGreaterThan(0);
    expect(after.pid).toBe(workload.pid); // restored with its own pid, in the destination's pid namespace
    expect(after.checksum).toBe(before.checksum);
    expect(after.tick).toBeGreaterThan(before.tick);
    return attack;
  }

  for (const mode of ['pre-copy', 'lazy'] as const) {
    it(`changes nothing (${mode}): the migration succeeds, the workload keeps its memory, one copy runs`, async () => {
      // lazy: CRIU's lazy page server listens on loopback for a few ms only, and an attacker on a
      // busy 2-core machine may be off its core all that time; every try must come out intact,
      // and one at least must have run the race
      for (let attempt = 1; attempt <= LAZY_TRIES; attempt++) {
        const attack = await migrateUnderAttack(mode, attempt);
        if (mode === 'pre-copy') break;
        if (attack.portsSeen.length > 0) {
          // the race was run: CRIU's lazy page server listened on loopback, and the attacker went for it
          expect(attack.connected + attack.refused).toBeGreaterThan(0);
          break;
        }
        expect(attempt, 'the attacker never saw CRIU\'s lazy page server listen').toBeLessThan(LAZY_TRIES);
      }
      // (pre-copy, and the destination's lazy-pages daemon in both modes, run CRIU's page-server
      // session over a socket pair: nothing of the migration's listens on loopback there at all)
    }, 300_000);
  }
});
