import type { Readable, Writable } from 'node:stream';
import { PAGE_SIZE } from '../src/criu/index.js';
import { StreamReader } from '../src/streams/stream-reader.js';
import { writeChunk } from '../src/streams/writable-writes.js';
import { pageRunRecord, readPageRun } from './wire/page-records.js';

/**
 * Lazy mode on the link. The cache asks for pages on a LAZY_REQUESTS channel; the proxy sends the
 * pages asked for on a LAZY_ANSWERS channel, which the link sends ahead of bulk traffic, and every
 * other page on a LAZY_PUSH channel named LAZY_PUSH_CHANNEL, behind them. All use migration.proto's
 * PageRun record (proxy/wire/page-records.ts) with its pid set; where pages travel, they follow it.
 */
export const LAZY_PUSH_CHANNEL = 'lazy-push';

/** A lazy page record no haul sends: a page count of zero or above what CRIU asks for at once. */
export class LazyWireError extends Error {
  override readonly name = 'LazyWireError';
  readonly code = 'HAUL_LAZY_WIRE';
}

export interface PageRun {
  readonly pid: number;
  readonly vaddr: bigint;
  readonly nrPages: number;
}

const record = (run: PageRun): Buffer => pageRunRecord({ vaddr: run.vaddr, nr_pages: run.nrPages, pid: run.pid });

// rejects, never waits for good, once the channel is destroyed (its session aborted)
const write = writeChunk;

/** Asks the source for pages; `again`: pages it sent before, which the destination handed over and is asked for anew. */
export async function writePageRequest(channel: Writable, run: PageRun, options: { readonly again?: boolean } = {}): Promise<void> {
  await write(channel, pageRunRecord({ vaddr: run.vaddr, nr_pages: run.nrPages, pid: run.pid, again: options.again ?? false }));
}

/** Writes a run and its pages; with waitForDrain false the caller bounds what it buffers. */
export async function writePages(channel: Writable, run: PageRun, pages: AsyncIterable<Buffer>, options = { waitForDrain: true }): Promise<void> {
  const put = options.waitForDrain ? (bytes: Buffer) => write(channel, bytes) : (bytes: Buffer) => void channel.write(bytes);
  await put(record(run));
  for await (const chunk of pages) await put(chunk);
}

/**
 * The records on a channel; with pages, each comes with its pages as they arrive, which the caller
 * must consume before asking for the next record.
 */
async function* records(channel: Readable, withPages: boolean): AsyncGenerator<{ run: PageRun; again: boolean; pages?: AsyncIterable<Buffer> }, void, undefined> {
  const reader = new StreamReader(channel);
  for (;;) {
    const record = await readPageRun(reader, 'lazy page record');
    if (record === null) return;
    const run = { pid: record.pid, nrPages: record.nr_pages, vaddr: record.vaddr };
    // CRIU asks for at most 4 MiB at a time (criu/uffd.c MAX_XFER_LEN), and the proxy pushes less
    if (run.nrPages === 0 || run.nrPages > 1024) throw new LazyWireError(`lazy page record of ${run.nrPages} pages`);
    if (!withPages) {
      yield { run, again: record.again };
      continue;
    }
    yield { run, again: false, pages: reader.readChunks(run.nrPages * PAGE_SIZE, 'lazy pages') };
  }
}

export const readPageRequests = (channel: Readable): AsyncGenerator<{ run: PageRun; again: boolean }, void, undefined> => records(channel, false);
export const readPages = (channel: Readable): AsyncGenerator<{ run: PageRun; pages?: AsyncIterable<Buffer> }, void, undefined> => records(channel, true);
