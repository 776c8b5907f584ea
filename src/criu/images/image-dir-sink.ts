import type { PagemapSink } from '../page-server/dump-receiver.js';
import type { PagemapTarget } from '../page-server/protocol.js';
import { PagemapWriter, type PagemapEntry } from './pagemap.js';

/**
 * CRIU's page server numbers the pages images it writes from 0x10001 (criu/page-xfer.c
 * up_page_ids_base), so they never collide with the pages-<n>.img a local dump writes from 1.
 */
export const FIRST_PAGES_ID = 0x10001;

/** Writes received pagemaps into an image directory, restore-ready, as `criu page-server` would. */
export class ImageDirPagemapSink implements PagemapSink {
  private current: PagemapWriter | undefined;
  private nextPagesId = FIRST_PAGES_ID;
  readonly written: Array<{ target: PagemapTarget; pagesId: number; pages: number }> = [];

  constructor(private readonly dir: string) {}

  async beginPagemap(target: PagemapTarget): Promise<void> {
    const pagesId = this.nextPagesId++;
    this.current = await PagemapWriter.create(this.dir, target, pagesId);
    this.written.push({ target, pagesId, pages: 0 });
  }

  async addEntry(entry: PagemapEntry, pages: AsyncIterable<Buffer> | undefined): Promise<void> {
    if (!this.current) throw new Error('page data before any pagemap was opened');
    await this.current.add(entry, pages);
  }

  async endPagemap(): Promise<void> {
    const writer = this.current;
    this.current = undefined;
    const pages = (await writer?.close()) ?? 0;
    const last = this.written[this.written.length - 1];
    if (last) last.pages = pages;
  }

  async finish(): Promise<void> {
    await this.endPagemap();
  }

  /** Drops a half-written pagemap after a failed session. */
  async abort(): Promise<void> {
    const writer = this.current;
    this.current = undefined;
    await writer?.destroy();
  }
}
