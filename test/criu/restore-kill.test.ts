import { chmodSync, existsSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect, it } from 'vitest';
import { runCriu, startCriu } from '../../src/criu/run/criu-process.js';
import { identify, isRunning, killRestoreTree } from '../../src/host/index.js';
import { describeOnHost } from '../support/host.js';
import { useMigrationScenes } from '../support/migration-scene.js';

describeOnHost('a restore haul gives up on', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();

  it('is killed with every process CRIU made for it: none is left waiting for a CRIU that is gone', async () => {
    const { source: images, destination: dir, workload, defer } = await scenes.start('restore-kill', 8);
    await runCriu('dump', ['-t', String(workload.pid), '-D', images], { logFile: `${images}/dump.log` });
    await workload.exited;
    // CRIU waits in its post-restore action with the restored tree made and not yet resumed
    const script = `${dir}/hold.sh`;
    writeFileSync(script, '#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = post-restore ] && exec sleep 120\nexit 0\n');
    chmodSync(script, 0o755);
    const restore = startCriu('restore', ['-D', images, '-d', '--action-script', script], { logFile: `${dir}/restore.log` });
    restore.exited.catch(() => {});
    defer(() => restore.child.kill('SIGKILL'));
    const deadline = Date.now() + 30_000;
    while (!existsSync(`/proc/${workload.pid}`) && Date.now() < deadline) await sleep(20);
    await sleep(200);
    const restored = identify(workload.pid);
    expect(restored).toBeDefined();
    const criu = identify(restore.child.pid!)!;

    expect(killRestoreTree(criu)).toBeGreaterThanOrEqual(1);
    await expect.poll(() => isRunning(criu) || isRunning(restored!), { timeout: 5_000 }).toBe(false);
  });
});
