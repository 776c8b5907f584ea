import { cpSync, readdirSync } from 'node:fs';
import { expect, it } from 'vitest';
import { runCriu, startCriu } from '../../src/criu/run/criu-process.js';
import { describeOnHost } from '../support/host.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { freePort } from '../support/scratch.js';
import { realtimeNs } from '../support/workload.js';

describeOnHost('CRIU on both ends: page-server (pre-copy) migration', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();

  it('streams a 64 MiB workload into `criu page-server` and restores it there intact', async () => {
    const { source, destination, workload, defer, expectContinued } = await scenes.start('ps', 64);

    const port = String(await freePort());
    const pageServer = startCriu(
      'page-server',
      ['--images-dir', destination, '--address', '127.0.0.1', '--port', port],
      { logFile: `${destination}/page-server.log`, statusFd: true },
    );
    defer(() => pageServer.child.kill('SIGKILL'));
    await pageServer.ready;
    const frozenAt = realtimeNs();
    await runCriu(
      'dump',
      ['-t', String(workload.pid), '-D', source, '--page-server', '--address', '127.0.0.1', '--port', port],
      { logFile: `${source}/dump.log` },
    );
    await pageServer.exited;
    await workload.exited;

    // the pages went over the wire, not into the source's image directory
    expect(readdirSync(source).filter((name) => name.startsWith('pages-'))).toEqual([]);
    expect(readdirSync(destination).filter((name) => name.startsWith('pages-')).length).toBeGreaterThan(0);
    cpSync(source, destination, { recursive: true, force: false });
    await runCriu('restore', ['-D', destination, '-d'], { logFile: `${destination}/restore.log` });

    await expectContinued(frozenAt);
  });
});
