import { existsSync, writeFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { ImageCache, type CacheEvent } from '../../proxy/image-cache.js';
import { migratePreCopy } from '../../proxy/image-proxy.js';
import { describeOnHost } from '../support/host.js';
import { hostApp } from '../support/link-hosts.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { CRIU_ON_SECOND_HOST, holdRestoredProcesses } from '../support/second-host.js';
import { realtimeNs, reportFrom } from '../support/workload.js';

describeOnHost('haul pre-copy migration of a running process, source held until the destination confirms', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();

  it('restores it on the destination and only then ends the source', async () => {
    const { destination, workload, defer, before } = await scenes.start('migrate', 64);
    holdRestoredProcesses(destination, defer);
    const events: CacheEvent[] = [];
    const cache = await ImageCache.start({ address: '127.0.0.1', port: 0, dir: `${destination}/cache`, insecure: true, application: hostApp('destination'), criuBinary: CRIU_ON_SECOND_HOST, onEvent: (e) => events.push(e) });
    defer(() => void cache.close());

    const frozenAt = realtimeNs();
    const summary = await migratePreCopy({ pid: workload.pid, to: `ws://127.0.0.1:${cache.port}`, insecure: true, application: hostApp('source') });
    expect(summary.pages).toBeGreaterThanOrEqual((64 * 1024 * 1024) / 4096);
    expect(events.map((e) => e.kind)).toEqual(['migration', 'restored']);
    // the source copy is gone; the restored one beats on with the same memory
    await workload.exited;
    const after = await reportFrom(workload.dir, frozenAt);
    expect(after.checksum).toBe(before.checksum);
    expect(after.tick).toBeGreaterThan(before.tick);
    expect(existsSync(`/proc/${workload.pid}`)).toBe(false);
  }, 120_000);

  it('leaves the source running, memory intact, when the destination cannot restore', async () => {
    const { destination, workload, defer, expectContinued } = await scenes.start('migrate-fail', 16);
    const failing = `${destination}/criu-that-fails.sh`;
    writeFileSync(failing, '#!/bin/sh\necho "Error (criu/cr-restore.c:1): simulated restore failure" > "$(echo "$@" | sed -n "s/.*-o \\([^ ]*\\).*/\\1/p")"\nexit 1\n', { mode: 0o755 });
    const cache = await ImageCache.start({ address: '127.0.0.1', port: 0, dir: `${destination}/cache`, insecure: true, application: hostApp('destination'), criuBinary: failing });
    defer(() => void cache.close());

    const frozenAt = realtimeNs();
    await expect(migratePreCopy({ pid: workload.pid, to: `ws://127.0.0.1:${cache.port}`, insecure: true, application: hostApp('source') })).rejects.toMatchObject({
      code: 'HAUL_MIGRATION_FAILED',
      message: expect.stringMatching(/pre-copy migration of \d+ failed, the source process keeps running: the destination could not restore: criu restore failed \(1\).*simulated restore failure/s),
    });
    await expectContinued(frozenAt);
  }, 120_000);

  it('leaves the source running when the destination goes away in the middle of the transfer', async () => {
    const { destination, workload, defer, expectContinued } = await scenes.start('migrate-lost', 128);
    const cache = await ImageCache.start({
      address: '127.0.0.1', port: 0, dir: `${destination}/cache`, insecure: true, application: hostApp('destination'), criuBinary: CRIU_ON_SECOND_HOST,
      // the destination dies as soon as pages start to arrive
      onEvent: (event) => void (event.kind === 'migration' && setTimeout(() => void cache.close(), 50)),
    });
    defer(() => void cache.close());
    const frozenAt = realtimeNs();
    await expect(migratePreCopy({ pid: workload.pid, to: `ws://127.0.0.1:${cache.port}`, insecure: true, application: hostApp('source'), resumeWindowMs: 500 })).rejects.toThrow(
      /pre-copy migration of \d+ failed, the source process keeps running: the peer aborted: the listener is shutting down/,
    );
    await expectContinued(frozenAt);
  }, 120_000);
});
