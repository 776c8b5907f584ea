import type { PageSource } from '../../src/criu/page-server/lazy-pages-server.js';
import { PAGE_SIZE, PageFlag } from '../../src/criu/page-server/protocol.js';
import { PagesFile, readPagemap, type Pagemap } from '../../src/criu/images/pagemap.js';
import { ImageFormatError } from '../../src/criu/images/schemas.js';

/** Serves pages of tasks from a dump's image directory, as a lazy migration's source would. */
export class ImageDirPageSource implements PageSource {
  private readonly tasks = new Map<number, Promise<{ pagemap: Pagemap; pages: PagesFile }>>();

  constructor(private readonly dir: string) {}

  private task(pid: number): Promise<{ pagemap: Pagemap; pages: PagesFile }> {
    let task = this.tasks.get(pid);
    if (!task) {
      task = (async () => {
        const pagemap = await readPagemap(this.dir, { type: 'pid', id: pid });
        return { pagemap, pages: await PagesFile.open(this.dir, pagemap.pagesId) };
      })();
      this.tasks.set(pid, task);
    }
    return task;
  }

  async read(pid: number, vaddr: bigint, nrPages: number): Promise<{ nrPages: number; pages: AsyncIterable<Buffer> }> {
    const { pagemap, pages } = await this.task(pid);
    const page = BigInt(PAGE_SIZE);
    // entries are in address order: binary search for the last one starting at or below vaddr
    let low = 0;
    let high = pagemap.entries.length - 1;
    while (low < high) {
      const mid = (low + high + 1) >> 1;
      if (pagemap.entries[mid]!.vaddr <= vaddr) low = mid;
      else high = mid - 1;
    }
    const entry = pagemap.entries[low];
    if (!entry || entry.vaddr > vaddr || vaddr >= entry.vaddr + BigInt(entry.nrPages) * page || !(entry.flags & PageFlag.PRESENT)) {
      throw new ImageFormatError(`task ${pid} has no page at 0x${vaddr.toString(16)} in ${this.dir}`);
    }
    if ((vaddr - entry.vaddr) % page !== 0n) throw new ImageFormatError(`GET at 0x${vaddr.toString(16)} is not page-aligned`);
    const first = Number((vaddr - entry.vaddr) / page);
    const count = Math.min(nrPages, entry.nrPages - first);
    return { nrPages: count, pages: pages.read(entry.pagesOffset + first * PAGE_SIZE, count * PAGE_SIZE) };
  }

  async close(): Promise<void> {
    await Promise.all([...this.tasks.values()].map(async (task) => (await task).pages.close()));
  }
}
