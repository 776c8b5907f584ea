import { afterEach, expect, it } from 'vitest';
import { ImageCache } from '../../proxy/image-cache.js';
import { migrateLazy, migratePreCopy } from '../../proxy/image-proxy.js';
import { describeOnHost } from '../support/host.js';
import { hostApp } from '../support/link-hosts.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { CRIU_BUILDS, DESTINATION_CRIU } from '../support/paths.js';
import { CRIU_ON_SECOND_HOST, holdRestoredProcesses } from '../support/second-host.js';
import { realtimeNs, reportFrom } from '../support/workload.js';

/**
 * A fleet upgrades one host at a time: haul migrate between a host with CRIU 4.1.1 and one with
 * 4.2.1, both ways, in both modes, with the real builds of each (whatever pass of the matrix this is).
 */
describeOnHost('haul migrate between CRIU 4.1.1 and CRIU 4.2.1 hosts', ['root', 'criu', 'criu-builds', 'workload'], () => {
  const scenes = useMigrationScenes();
  afterEach(() => void (process.env['HAUL_TEST_DESTINATION_CRIU'] = DESTINATION_CRIU));

  for (const mode of ['pre-copy', 'lazy'] as const) {
    for (const [from, to, ownNetworkNamespace] of [['4.1.1', '4.2.1', false], ['4.2.1', '4.1.1', false], ['4.2.1', '4.1.1', true], ['4.1.1', '4.2.1', true]] as const) {
      // a container has a network namespace of its own: CRIU 4.2 writes its image in a form CRIU 4.1 fails on
      const what = ownNetworkNamespace ? 'a process with a network namespace of its own' : 'a process';
      it(`moves ${what} ${mode} from CRIU ${from} to CRIU ${to}: the same process, its memory intact`, async () => {
        process.env['HAUL_TEST_DESTINATION_CRIU'] = CRIU_BUILDS[to];
        const { destination, workload, defer, before } = await scenes.start(`skew-${mode}`, 16, { ownNetworkNamespace });
        holdRestoredProcesses(destination, defer);
        const cache = await ImageCache.start({ address: '127.0.0.1', port: 0, dir: `${destination}/cache`, insecure: true, application: hostApp('destination', to), criuBinary: CRIU_ON_SECOND_HOST });
        defer(() => void cache.close());
        const frozenAt = realtimeNs();
        const migrate = mode === 'lazy' ? migrateLazy : migratePreCopy;
        const summary = await migrate({ pid: workload.pid, to: `ws://127.0.0.1:${cache.port}`, insecure: true, application: hostApp('source', from), criuBinary: CRIU_BUILDS[from]! });
        expect(summary.mode).toBe(mode);
        await workload.exited;
        const after = await reportFrom(workload.dir, frozenAt);
        expect(after.checksum).toBe(before.checksum);
        expect(after.tick).toBeGreaterThan(before.tick);
      }, 120_000);
    }
  }
});
