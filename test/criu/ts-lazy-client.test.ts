import { copyFileSync, mkdirSync, readdirSync } from 'node:fs';
import { connect } from 'node:net';
import { expect, it } from 'vitest';
import { PagemapWriter, PagesFile, readPagemap } from '../../src/criu/images/pagemap.js';
import { LazyPagesClient } from '../../src/criu/page-server/lazy-pages-client.js';
import { PAGE_SIZE, PageFlag } from '../../src/criu/page-server/protocol.js';
import { runCriu, startCriu } from '../../src/criu/run/criu-process.js';
import { criuVersion, headerLayoutFor } from '../../src/criu/run/criu-version.js';
import { describeOnHost } from '../support/host.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { freePort } from '../support/scratch.js';
import { realtimeNs } from '../support/workload.js';

const GET_PAGES = 256;

describeOnHost('haul as the client of `criu dump --lazy-pages`', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();

  it('pulls every lazy page with pipelined GETs, and the pages restore the workload intact', async () => {
    const { source, destination, workload, defer, expectContinued } = await scenes.start('tslazyclient', 64);
    const port = await freePort();
    const frozenAt = realtimeNs();
    const dump = startCriu(
      'dump',
      ['-t', String(workload.pid), '-D', source, '--lazy-pages', '--address', '127.0.0.1', '--port', String(port)],
      { logFile: `${source}/dump.log`, statusFd: true },
    );
    defer(() => dump.child.kill('SIGKILL'));
    await dump.ready;

    const socket = connect(port, '127.0.0.1');
    await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const client = new LazyPagesClient(socket, headerLayoutFor(await criuVersion()));

    // the restore images: everything the dump wrote, with the lazy runs filled in from the page server
    mkdirSync(destination, { recursive: true });
    let pulled = 0;
    for (const name of readdirSync(source)) {
      const task = /^pagemap-(\d+)\.img$/.exec(name);
      if (!task) {
        if (name.endsWith('.img')) copyFileSync(`${source}/${name}`, `${destination}/${name}`);
        continue;
      }
      const target = { type: 'pid', id: Number(task[1]) } as const;
      const pagemap = await readPagemap(source, target);
      const localPages = await PagesFile.open(source, pagemap.pagesId);
      const writer = await PagemapWriter.create(destination, target, 0x20001 + target.id);
      for (const entry of pagemap.entries) {
        if (!(entry.flags & PageFlag.LAZY)) {
          await writer.add(entry, entry.flags & PageFlag.PRESENT ? localPages.read(entry.pagesOffset, entry.nrPages * PAGE_SIZE) : undefined);
          continue;
        }
        // pipeline the GETs for this run, then take the answers in order (they may be short)
        const answers = [];
        for (let page = 0; page < entry.nrPages; page += GET_PAGES) {
          answers.push(client.get(target.id, entry.vaddr + BigInt(page * PAGE_SIZE), Math.min(GET_PAGES, entry.nrPages - page)));
        }
        let vaddr = entry.vaddr;
        for (const pending of answers) {
          const answer = await pending;
          await writer.add({ vaddr, nrPages: answer.nrPages, flags: PageFlag.PRESENT }, answer.pages);
          vaddr += BigInt(answer.nrPages * PAGE_SIZE);
          pulled += answer.nrPages;
        }
        expect(vaddr).toBe(entry.vaddr + BigInt(entry.nrPages * PAGE_SIZE));
      }
      await writer.close();
      await localPages.close();
    }
    expect(pulled).toBeGreaterThanOrEqual((64 * 1024 * 1024) / PAGE_SIZE);

    // CLOSE tells the dump every page has moved: it ends and the frozen original goes with it
    await client.close();
    await dump.exited;
    await workload.exited;
    await runCriu('restore', ['-D', destination, '-d'], { logFile: `${destination}/restore.log` });
    await expectContinued(frozenAt);
  }, 120_000);
});
