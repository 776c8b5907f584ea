import { writeFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { ImageCache } from '../../proxy/image-cache.js';
import { migrateLazy } from '../../proxy/image-proxy.js';
import { describeOnHost } from '../support/host.js';
import { hostApp } from '../support/link-hosts.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { CRIU_ON_SECOND_HOST, holdRestoredProcesses } from '../support/second-host.js';
import { realtimeNs, reportFrom } from '../support/workload.js';

describeOnHost('haul lazy (post-copy) migration of a running process', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();

  it('restores before the memory arrives, moves every page, and only then ends the source', async () => {
    const { destination, workload, defer, before } = await scenes.start('lazymig', 64);
    holdRestoredProcesses(destination, defer);
    const cache = await ImageCache.start({ address: '127.0.0.1', port: 0, dir: `${destination}/cache`, insecure: true, application: hostApp('destination'), criuBinary: CRIU_ON_SECOND_HOST });
    defer(() => void cache.close());

    const frozenAt = realtimeNs();
    const summary = await migrateLazy({ pid: workload.pid, to: `ws://127.0.0.1:${cache.port}`, insecure: true, application: hostApp('source') });
    expect(summary.mode).toBe('lazy');
    expect(summary.lazyPages).toBeGreaterThanOrEqual((60 * 1024 * 1024) / 4096);
    await workload.exited;
    const after = await reportFrom(workload.dir, frozenAt);
    expect(after.checksum).toBe(before.checksum);
    expect(after.tick).toBeGreaterThan(before.tick);
  }, 120_000);

  it('leaves the source running, memory intact, when the destination cannot restore', async () => {
    const { destination, workload, defer, expectContinued } = await scenes.start('lazymig-fail', 16);
    const failing = `${destination}/criu-that-fails.sh`;
    writeFileSync(failing, '#!/bin/sh\nexit 1\n', { mode: 0o755 });
    const cache = await ImageCache.start({ address: '127.0.0.1', port: 0, dir: `${destination}/cache`, insecure: true, application: hostApp('destination'), criuBinary: failing });
    defer(() => void cache.close());
    const frozenAt = realtimeNs();
    await expect(migrateLazy({ pid: workload.pid, to: `ws://127.0.0.1:${cache.port}`, insecure: true, application: hostApp('source') })).rejects.toThrow(
      /lazy migration of \d+ failed, the source process keeps running: the destination could not restore/,
    );
    await expectContinued(frozenAt);
  }, 120_000);

  it("says why when the destination's restore fails after every page was sent, and the source runs on", async () => {
    const { destination, workload, defer, expectContinued } = await scenes.start('lazymig-late', 16);
    // the lazy-pages daemon is real, so the pages all go; the restore fails only after
    const lateFailing = `${destination}/criu-restore-fails-late.sh`;
    writeFileSync(lateFailing, `#!/bin/sh\nif [ "$1" = restore ]; then sleep 3; echo 'simulated late restore failure' >&2; exit 1; fi\nexec ${CRIU_ON_SECOND_HOST} "$@"\n`, { mode: 0o755 });
    const cache = await ImageCache.start({ address: '127.0.0.1', port: 0, dir: `${destination}/cache`, insecure: true, application: hostApp('destination'), criuBinary: lateFailing });
    defer(() => void cache.close());
    const frozenAt = realtimeNs();
    await expect(migrateLazy({ pid: workload.pid, to: `ws://127.0.0.1:${cache.port}`, insecure: true, application: hostApp('source') })).rejects.toThrow(
      /lazy migration of \d+ failed, the source process keeps running: the destination could not restore: .*simulated late restore failure/s,
    );
    await expectContinued(frozenAt);
  }, 120_000);
});
