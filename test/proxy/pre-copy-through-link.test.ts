import { readdirSync } from 'node:fs';
import { expect, it } from 'vitest';
import { acceptOne } from '../../src/criu/page-server/connection.js';
import { receiveDump } from '../../src/criu/page-server/dump-receiver.js';
import { runCriu } from '../../src/criu/run/criu-process.js';
import { criuVersion, headerLayoutFor } from '../../src/criu/run/criu-version.js';
import { dialLink } from '../../src/link/dialer.js';
import { LinkListener } from '../../src/link/listener.js';
import type { LinkSession } from '../../src/link/session.js';
import { CacheStore } from '../../proxy/cache-store.js';
import { sendImageFiles } from '../../proxy/images-to-link.js';
import { LinkPagemapSink } from '../../proxy/pages-to-link.js';
import { describeOnHost } from '../support/host.js';
import { hostApp } from '../support/link-hosts.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { realtimeNs } from '../support/workload.js';
import { sendControl, ChannelKind, openChannel } from '../../proxy/wire/index.js';

describeOnHost('pre-copy through haul: criu dump -> image-proxy -> link -> image-cache -> criu restore', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();

  it('moves a 64 MiB workload with no page data on the source disk, and it continues intact', async () => {
    const { source, destination, workload, defer, expectContinued } = await scenes.start('pre-copy', 64);
    const listener = await LinkListener.listen('127.0.0.1', 0, { insecure: true, application: hostApp('destination') });
    defer(() => void listener.close());
    const stored = new Promise<CacheStore>((resolve) => listener.once('session', (session: LinkSession) => resolve(new CacheStore(session, destination))));
    const { session } = await dialLink(`ws://127.0.0.1:${listener.port}`, { insecure: true, application: hostApp('source') });
    defer(() => session.close());

    // the image-proxy: CRIU's page server on loopback, pages straight onto the link
    const pageServer = await acceptOne('127.0.0.1', 0);
    defer(() => pageServer.close());
    const pages = new LinkPagemapSink(session);
    const layout = headerLayoutFor(await criuVersion());
    const received = pageServer.connection.then((socket) => receiveDump(socket, layout, pages));

    const frozenAt = realtimeNs();
    await runCriu(
      'dump',
      ['-t', String(workload.pid), '-D', source, '--page-server', '--address', '127.0.0.1', '--port', String(pageServer.port)],
      { logFile: `${source}/dump.log` },
    );
    const summary = await received;
    expect(summary.pagesReceived).toBeGreaterThanOrEqual((64 * 1024 * 1024) / 4096);
    await workload.exited;
    expect(readdirSync(source).filter((name) => name.startsWith('pages-'))).toEqual([]);

    // then the other images, and word that the set is complete
    const images = await sendImageFiles(session, source);
    const control = openChannel(session, ChannelKind.CONTROL, 'control');
    await sendControl(control.writable, { images_complete: { files: images.files, page_streams: pages.pageStreams, bytes: BigInt(images.bytes), filesystem_tars: 0 } });
    control.writable.end();

    const store = await stored;
    await store.complete;
    await runCriu('restore', ['-D', destination, '-d'], { logFile: `${destination}/restore.log` });
    await expectContinued(frozenAt);
  }, 120_000);
});
