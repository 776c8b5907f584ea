import { cpSync, readdirSync } from 'node:fs';
import { expect, it } from 'vitest';
import { ImageDirPagemapSink } from '../../src/criu/images/image-dir-sink.js';
import { readPagemap } from '../../src/criu/images/pagemap.js';
import { acceptOne } from '../../src/criu/page-server/connection.js';
import { receiveDump } from '../../src/criu/page-server/dump-receiver.js';
import { PageFlag } from '../../src/criu/page-server/protocol.js';
import { runCriu } from '../../src/criu/run/criu-process.js';
import { criuVersion, headerLayoutFor } from '../../src/criu/run/criu-version.js';
import { describeOnHost } from '../support/host.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { realtimeNs } from '../support/workload.js';

describeOnHost('haul\'s page server receives a real `criu dump --page-server`', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();

  for (const mib of [64, 512]) {
    it(`stores a ${mib} MiB workload's pages restore-ready, and real criu restore brings it back intact`, async () => {
      const { source, destination, workload, defer, expectContinued } = await scenes.start(`tsps${mib}`, mib);
      const layout = headerLayoutFor(await criuVersion());
      const listener = await acceptOne('127.0.0.1', 0);
      defer(() => listener.close());
      const sink = new ImageDirPagemapSink(destination);
      const received = listener.connection.then((socket) => receiveDump(socket, layout, sink));

      const frozenAt = realtimeNs();
      await runCriu(
        'dump',
        ['-t', String(workload.pid), '-D', source, '--page-server', '--address', '127.0.0.1', '--port', String(listener.port)],
        { logFile: `${source}/dump.log` },
      );
      const summary = await received;
      await workload.exited;

      // every page of the workload came through haul, none stayed in the source directory
      expect(summary.pagesReceived).toBeGreaterThanOrEqual((mib * 1024 * 1024) / 4096);
      expect(readdirSync(source).filter((name) => name.startsWith('pages-'))).toEqual([]);
      const pagemap = await readPagemap(destination, { type: 'pid', id: workload.pid });
      expect(pagemap.entries.some((entry) => entry.flags & PageFlag.PRESENT)).toBe(true);

      cpSync(source, destination, { recursive: true, force: false });
      await runCriu('restore', ['-D', destination, '-d'], { logFile: `${destination}/restore.log` });
      await expectContinued(frozenAt);
    }, 120_000);
  }
});
