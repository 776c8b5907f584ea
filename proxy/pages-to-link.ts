import { finished } from 'node:stream/promises';
import { type PagemapEntry, type PagemapSink, type PagemapTarget } from '../src/criu/index.js';
import { type OutgoingChannel, type LinkSession } from '../src/link/index.js';
import { pageChannelName, writePageRecord } from './page-stream.js';
import { ChannelKind, openChannel } from './wire/index.js';

/**
 * Where `criu dump --page-server` pages go on the source: straight onto the link, one channel per
 * pagemap, while the dump is still running. Nothing is written to the source's disk, and a slow
 * link slows the dump (backpressure) instead of filling memory.
 */
export class LinkPagemapSink implements PagemapSink {
  private current: OutgoingChannel | undefined;
  private readonly ended: Promise<void>[] = [];
  pageStreams = 0;
  /** Pages put on the link so far (PRESENT ones: those with data). */
  pagesSent = 0;

  constructor(private readonly session: LinkSession) {}

  async beginPagemap(target: PagemapTarget): Promise<void> {
    this.current = openChannel(this.session, ChannelKind.PAGES, pageChannelName(target));
    this.pageStreams++;
  }

  async addEntry(entry: PagemapEntry, pages: AsyncIterable<Buffer> | undefined): Promise<void> {
    if (!this.current) throw new Error('pages before any pagemap was opened');
    await writePageRecord(this.current.writable, entry, pages);
    if (pages) this.pagesSent += entry.nrPages;
  }

  async endPagemap(): Promise<void> {
    const channel = this.current;
    this.current = undefined;
    if (!channel) return;
    channel.writable.end();
    this.ended.push(finished(channel.writable));
  }

  /** Every page stream has been handed to the link (CRIU may be told the dump's pages are safe). */
  async finish(): Promise<void> {
    await this.endPagemap();
    await Promise.all(this.ended);
  }
}
