import { copyFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { PAGE_SIZE, PageFlag } from '../../src/criu/page-server/protocol.js';
import { FIRST_PAGES_ID } from '../../src/criu/images/image-dir-sink.js';
import { PagemapWriter, PagesFile, isPagesFileName, readPagemap } from '../../src/criu/images/pagemap.js';

const TASK_PAGEMAP = /^pagemap-(\d+)\.img$/;

export interface LazySplit {
  readonly eagerPages: number;
  readonly lazyPages: number;
}

/**
 * Prepares a lazy restore from a full dump: copies every image but the task pagemaps and pages, and
 * writes the task pagemaps anew with each LAZY run marked LAZY only (its pages stay behind, to be
 * fetched on demand) and every other run PRESENT with its pages copied. CRIU marks a run LAZY when
 * restore can fault it in later (private anonymous memory other than a thread's stack page,
 * criu/mem.c), so this is the same split `criu dump --lazy-pages` makes.
 */
export async function splitForLazyRestore(dumpDir: string, restoreDir: string): Promise<LazySplit> {
  let eagerPages = 0;
  let lazyPages = 0;
  let nextPagesId = FIRST_PAGES_ID;
  for (const name of await readdir(dumpDir)) {
    const task = TASK_PAGEMAP.exec(name);
    if (!task) {
      if (!isPagesFileName(name)) await copyFile(join(dumpDir, name), join(restoreDir, name));
      continue;
    }
    const target = { type: 'pid', id: Number(task[1]) } as const;
    const pagemap = await readPagemap(dumpDir, target);
    const pages = await PagesFile.open(dumpDir, pagemap.pagesId);
    const writer = await PagemapWriter.create(restoreDir, target, nextPagesId++);
    try {
      for (const entry of pagemap.entries) {
        if (entry.flags & PageFlag.LAZY) {
          await writer.add({ vaddr: entry.vaddr, nrPages: entry.nrPages, flags: PageFlag.LAZY });
          lazyPages += entry.nrPages;
        } else if (entry.flags & PageFlag.PRESENT) {
          await writer.add(entry, pages.read(entry.pagesOffset, entry.nrPages * PAGE_SIZE));
          eagerPages += entry.nrPages;
        } else {
          await writer.add(entry);
        }
      }
      await writer.close();
    } catch (error) {
      await writer.destroy();
      throw error;
    } finally {
      await pages.close();
    }
  }
  return { eagerPages, lazyPages };
}
