import type { Readable, Writable } from 'node:stream';
import { PAGE_SIZE, PageFlag, type PagemapTarget, type PagemapEntry } from '../src/criu/index.js';
import { StreamReader } from '../src/streams/stream-reader.js';
import { checkedName } from '../src/name-grammars.js';
import { writeChunk } from '../src/streams/writable-writes.js';
import { pageRunRecord, readPageRun } from './wire/page-records.js';

/**
 * One pagemap on one link channel: a PageRun record (proxy/wire/page-records.ts) per entry, with
 * the entry's flags, followed by the entry's pages when it is PRESENT. The channel is named after
 * the pagemap's image file, so the cache knows what it is writing before the first record arrives.
 */
const KNOWN_FLAGS = PageFlag.PRESENT | PageFlag.LAZY | PageFlag.PARENT;

/** A page channel whose name or records no haul writes. */
export class PageStreamError extends Error {
  override readonly name = 'PageStreamError';
  readonly code = 'HAUL_PAGE_STREAM';
}

export function pageChannelName(target: PagemapTarget): string {
  return target.type === 'pid' ? `pagemap-${target.id}` : `pagemap-shmem-${target.id}`;
}

// pageChannelName: a pagemap's image name without ".img"; ids are CRIU's
// pids and shmem ids, which fit 32 bits
const PAGE_STREAM_NAME = /^pagemap-(shmem-)?([1-9][0-9]{0,9}|0)$/;

/** The pagemap a page stream's name says it carries, if the name fits, else BadNameError. */
export function pageStreamTarget(value: unknown): PagemapTarget {
  const match = PAGE_STREAM_NAME.exec(checkedName('page stream name', value, PAGE_STREAM_NAME, 'it does not name a pagemap (pagemap-N or pagemap-shmem-N)'));
  return { type: match![1] ? 'shmem' : 'pid', id: Number(match![2]) };
}


/** The pagemap a page channel's name (the peer's word) says it carries; BadNameError if it names none. */
export function targetOfPageChannel(name: string): PagemapTarget {
  return pageStreamTarget(name);
}

// rejects, never waits for good, once the channel is destroyed (its session aborted)
const write = writeChunk;

/** Writes one entry and its pages (exactly nrPages of them when PRESENT) to a page channel. */
export async function writePageRecord(channel: Writable, entry: PagemapEntry, pages: AsyncIterable<Buffer> | undefined): Promise<void> {
  await write(channel, pageRunRecord({ vaddr: entry.vaddr, nr_pages: entry.nrPages, flags: entry.flags }));
  for await (const chunk of pages ?? []) await write(channel, chunk);
}

/** The entries of a page channel, each with its pages as they arrive (read them before the next). */
export async function* readPageRecords(channel: Readable): AsyncGenerator<{ entry: PagemapEntry; pages: AsyncIterable<Buffer> | undefined }, void, undefined> {
  const reader = new StreamReader(channel);
  for (;;) {
    const record = await readPageRun(reader, 'page record');
    if (record === null) return;
    const entry = { vaddr: record.vaddr, nrPages: record.nr_pages, flags: record.flags };
    // the cache writes the flags into the pagemap CRIU restores from, where they say where each
    // page comes from (criu/include/pagemap.h PE_*): no others, and never none
    if ((entry.flags & ~KNOWN_FLAGS) !== 0 || entry.flags === 0) throw new PageStreamError(`page record with flags 0x${entry.flags.toString(16)}`);
    const present = (entry.flags & PageFlag.PRESENT) !== 0;
    yield { entry, pages: present ? reader.readChunks(entry.nrPages * PAGE_SIZE, 'pages') : undefined };
  }
}
