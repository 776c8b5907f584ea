import { cpSync, mkdirSync, readdirSync } from 'node:fs';
import { afterEach, expect, it } from 'vitest';
import { runCriu, startCriu } from '../support/criu.js';
import { describeOnHost } from '../support/host.js';
import { freePort, scratchDir } from '../support/scratch.js';
import { LocalWorkload, expectedChecksum, realtimeNs, reportFrom, stopWorkload } from '../support/workload.js';

describeOnHost('CRIU on both ends: page-server (pre-copy) migration', ['root', 'criu', 'workload'], () => {
  const cleanups: Array<() => void> = [];
  afterEach(() => cleanups.splice(0).reverse().forEach((cleanup) => cleanup()));

  it('streams a 64 MiB workload into `criu page-server` and restores it there intact', async () => {
    const scratch = scratchDir('ps');
    cleanups.push(scratch.remove);
    const source = `${scratch.path}/source`;
    const destination = `${scratch.path}/destination`;
    mkdirSync(source);
    mkdirSync(destination);
    const workload = await LocalWorkload.start(`${scratch.path}/workload`, 64);
    cleanups.push(() => stopWorkload(workload.pid));
    const before = await workload.report();
    expect(before.checksum).toBe(await expectedChecksum(64));

    const port = String(await freePort());
    const pageServer = startCriu(
      'page-server',
      ['--images-dir', destination, '--address', '127.0.0.1', '--port', port],
      `${destination}/page-server.log`,
      true,
    );
    cleanups.push(() => pageServer.child.kill('SIGKILL'));
    await pageServer.ready;
    const frozenAt = realtimeNs();
    await runCriu(
      'dump',
      ['-t', String(workload.pid), '-D', source, '--page-server', '--address', '127.0.0.1', '--port', port],
      `${source}/dump.log`,
    );
    await pageServer.done;
    await workload.exited;

    // the pages went over the wire, not into the source's image directory
    expect(readdirSync(source).filter((name) => name.startsWith('pages-'))).toEqual([]);
    expect(readdirSync(destination).filter((name) => name.startsWith('pages-')).length).toBeGreaterThan(0);
    cpSync(source, destination, { recursive: true, force: false });
    await runCriu('restore', ['-D', destination, '-d'], `${destination}/restore.log`);

    const after = await reportFrom(workload.dir, frozenAt);
    expect(after.pid).toBe(workload.pid);
    expect(after.checksum).toBe(before.checksum);
    expect(after.tick).toBeGreaterThan(before.tick);
  });
});
