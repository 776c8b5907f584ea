import { expect, it } from 'vitest';
import { ImageDirPageSource } from '../support/image-dir-page-source.js';
import { splitForLazyRestore } from '../support/lazy-split.js';
import { acceptOne } from '../../src/criu/page-server/connection.js';
import { serveLazyPages } from '../../src/criu/page-server/lazy-pages-server.js';
import { runCriu, startCriu } from '../../src/criu/run/criu-process.js';
import { criuVersion, headerLayoutFor } from '../../src/criu/run/criu-version.js';
import { describeOnHost } from '../support/host.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { realtimeNs } from '../support/workload.js';

describeOnHost('haul plays the source of a lazy migration for real `criu lazy-pages`', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();

  it('answers every GET from a dump\'s images, and `criu restore --lazy-pages` brings the workload back intact', async () => {
    const { source, destination, workload, defer, expectContinued } = await scenes.start('tslazy', 64);
    const frozenAt = realtimeNs();
    await runCriu('dump', ['-t', String(workload.pid), '-D', source], { logFile: `${source}/dump.log` });
    await workload.exited;

    const split = await splitForLazyRestore(source, destination);
    // the workload's heap is private anonymous memory: nearly all of it stays behind until asked for
    expect(split.lazyPages).toBeGreaterThanOrEqual((64 * 1024 * 1024) / 4096);

    const layout = headerLayoutFor(await criuVersion());
    const listener = await acceptOne('127.0.0.1', 0);
    defer(() => listener.close());
    const pageSource = new ImageDirPageSource(source);
    defer(() => void pageSource.close());
    const served = listener.connection.then((socket) => serveLazyPages(socket, layout, pageSource));

    const lazyPages = startCriu(
      'lazy-pages',
      ['--page-server', '--address', '127.0.0.1', '--port', String(listener.port), '-D', destination],
      { logFile: `${destination}/lazy-pages.log`, statusFd: true, cwd: destination },
    );
    defer(() => lazyPages.child.kill('SIGKILL'));
    await lazyPages.ready;
    await runCriu('restore', ['--lazy-pages', '-D', destination, '-d'], { logFile: `${destination}/restore.log`, cwd: destination });

    const summary = await served;
    await lazyPages.exited;
    // the lazy-pages daemon fetched every lazy page from haul, in the order it asked
    expect(summary.pagesSent).toBe(split.lazyPages);
    expect(summary.requests).toBeGreaterThan(1);

    await expectContinued(frozenAt);
  }, 120_000);
});
