import { open, type FileHandle } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { type PageSource, PAGE_SIZE } from '../src/criu/index.js';
import { type LinkSession } from '../src/link/index.js';
import { LAZY_PUSH_CHANNEL, readPages, writePageRequest, type PageRun } from './lazy-wire.js';
import { PageTable } from './page-table.js';
import { ChannelKind, openChannel } from './wire/index.js';

const page = BigInt(PAGE_SIZE);
/** Pages read from the file into one buffer at most, when answering criu lazy-pages. */
const MAX_PAGES_PER_READ = 64;

/**
 * The cache's side of lazy mode: keeps the pages the proxy sends (asked for or pushed ahead) in a
 * file, and answers the destination's `criu lazy-pages` from it. A page it does not have yet is
 * asked for from the source, and the answer waits for it; CRIU accepts short answers, so an answer
 * covers the run of pages present from the one asked for on.
 */
export class LazyPageStore implements PageSource {
  private readonly where = new PageTable(); // offset in the file
  private readonly waiting = new Map<string, Array<() => void>>(); // by "pid:vaddr": few, faults only
  private readonly asked = new PageTable();
  private end = 0;
  private closed = false;
  private failure: Error | undefined;
  private wakeOnFailure!: () => void;
  private readonly failed = new Promise<void>((resolve) => (this.wakeOnFailure = resolve));
  received = 0;

  private constructor(
    private readonly file: FileHandle,
    private readonly requests: Writable,
  ) {}

  static async create(path: string, requests: Writable): Promise<LazyPageStore> {
    return new LazyPageStore(await open(path, 'w+', 0o600), requests);
  }

  /**
   * The store of a destination's session: asks for faults on a LAZY_REQUESTS channel it opens, and
   * takes the pages that arrive on the two lazy channels (answers, and the rest pushed). Call it as
   * soon as the session exists: the channels are listened for before anything is awaited.
   */
  static forSession(session: LinkSession, path: string): Promise<LazyPageStore> {
    const store = LazyPageStore.create(path, openChannel(session, ChannelKind.LAZY_REQUESTS, 'lazy-requests').writable);
    store.catch(() => {});
    session.on('channel', (channel) => {
      const lazy = channel.kind === ChannelKind.LAZY_ANSWERS || (channel.kind === ChannelKind.PAGES && channel.name === LAZY_PUSH_CHANNEL);
      if (!lazy) return;
      void (async () => {
        const pages = await store;
        for await (const { run, pages: data } of readPages(channel.readable)) await pages.add(run, data!);
      })().catch((error: Error) => session.isOpen && session.abort(`bad lazy pages from the source: ${error.message}`));
    });
    return store;
  }

  /**
   * A run of pages from the proxy, written to the file as its chunks arrive (never joined in
   * memory); once the migration is over (closed), late ones are read and dropped.
   */
  async add(run: PageRun, pages: AsyncIterable<Buffer>): Promise<void> {
    const offset = this.end;
    this.end += run.nrPages * PAGE_SIZE;
    let at = offset;
    for await (const chunk of pages) {
      if (this.closed) continue;
      try {
        await this.file.write(chunk, 0, chunk.length, at);
      } catch (error) {
        if (!this.closed) throw error; // closed while writing: the migration ended meanwhile
      }
      at += chunk.length;
    }
    if (this.closed) return;
    for (let i = 0; i < run.nrPages; i++) {
      const vaddr = run.vaddr + BigInt(i) * page;
      if (this.where.has(run.pid, vaddr)) continue;
      this.where.set(run.pid, vaddr, offset + i * PAGE_SIZE);
      this.received++;
      if (this.waiting.size === 0) continue;
      const key = `${run.pid}:${vaddr}`;
      this.waiting.get(key)?.forEach((wake) => wake());
      this.waiting.delete(key);
    }
  }

  async read(pid: number, vaddr: bigint, nrPages: number): Promise<{ nrPages: number; pages: AsyncIterable<Buffer> }> {
    if (this.failure) throw this.failure;
    if (!this.where.has(pid, vaddr)) {
      const key = `${pid}:${vaddr}`;
      const arrived = new Promise<void>((resolve) => this.waiting.set(key, [...(this.waiting.get(key) ?? []), resolve]));
      if (!this.asked.has(pid, vaddr)) {
        this.asked.set(pid, vaddr, 1);
        await writePageRequest(this.requests, { pid, vaddr, nrPages });
      }
      await Promise.race([arrived, this.failed]);
      if (this.failure) throw this.failure;
    }
    const offsets: number[] = [];
    for (let i = 0; i < nrPages; i++) {
      const offset = this.where.get(pid, vaddr + BigInt(i) * page);
      if (offset === undefined) break;
      offsets.push(offset);
    }
    const file = this.file;
    // pages pushed in one run sit next to each other in the file: read each such stretch at once,
    // up to a bound (the pushes land back to back, so a stretch can be most of the workload, and
    // CRIU asks for whole ranges: one buffer per stretch held the cache above its memory bound)
    async function* pages(): AsyncGenerator<Buffer, void, undefined> {
      for (let i = 0; i < offsets.length; ) {
        let run = 1;
        while (run < MAX_PAGES_PER_READ && i + run < offsets.length && offsets[i + run] === offsets[i]! + run * PAGE_SIZE) run++;
        const bytes = Buffer.allocUnsafe(run * PAGE_SIZE);
        await file.read(bytes, 0, bytes.length, offsets[i]!);
        yield bytes;
        i += run;
      }
    }
    return { nrPages: offsets.length, pages: pages() };
  }

  /** The source can no longer send pages: every read waiting for one fails now, and later ones at once. */
  fail(error: Error): void {
    this.failure ??= error;
    this.wakeOnFailure();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.file.close();
  }
}
