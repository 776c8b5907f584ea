import { open, type FileHandle } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { type PageSource, PAGE_SIZE } from '../src/criu/index.js';
import { type LinkSession } from '../src/link/index.js';
import { LAZY_PUSH_CHANNEL, readPages, writePageRequest, type PageRun } from './lazy-wire.js';
import { PageTable, pageOf } from './page-table.js';
import { ChannelKind, openChannel } from './wire/index.js';

/**
 * Pushed pages the store holds in memory, not yet asked for by `criu lazy-pages`, before it stops
 * reading the push channel (the source then waits for credit). CRIU's background requests, one at
 * a time per process and 4 MiB at most (criu/uffd.c MAX_XFER_LEN), find their pages here while the
 * next ones are on the way; where fewer are here, the answer is short and CRIU asks for the rest
 * next. 2 MiB against 8 MiB, each side pinned to a core: the 1 GiB window 6.7-7.7 s against
 * 7.2-10.4 s (five runs each), 2 GiB 14.5-16.9 s against 14.1-16.3 s, 64 and 256 MiB alike, and the
 * cache's peak RSS 10-15 MiB lower (2 GiB: 144-149 MiB against 156-159). 32 MiB was no faster than
 * 8 and held the peak 27 MiB higher.
 */
export const DEFAULT_LAZY_HOLD_BYTES = 2 * 1024 * 1024;

/**
 * How long a push waits for `criu lazy-pages` to make room before the oldest held pages go to the
 * spill file. CRIU takes the held pages in well under this while it keeps up (2 MiB at 100 MB/s is
 * 20 ms); a store that stays full for longer holds pages CRIU is not asking for now, or never will
 * (the task unmapped them, or exited: criu/uffd.c drops those ranges), which would otherwise hold
 * every later push to the pace of CRIU's reads.
 */
const EVICT_AFTER_MS = 100;

/** Spilled pages read from the file into one buffer at most, when answering criu lazy-pages. */
const MAX_PAGES_PER_READ = 64;

/** A page's state in the store: here in memory, or in the spill file; or handed to CRIU, and let go. */
const HELD = 1;
const SERVED = 2;
const SPILLED = 3;
/** Handed over, then asked for again by CRIU, and asked of the source again: until it comes. */
const ASKED_AGAIN = 4;

/**
 * The cache's side of lazy mode: holds the pages the proxy sends (asked for, or pushed ahead) until
 * `criu lazy-pages` asks for them, and answers it. A page it does not have yet is asked for from
 * the source, and the answer waits for it; CRIU accepts short answers, so an answer covers the run
 * of pages present from the one asked for on.
 *
 * CRIU asks for a page once, as a rule (criu/uffd.c takes a range out of its list of missing pages
 * before it asks, and a fault on a page already asked for waits for that answer), so a page goes as
 * soon as it is handed over. Where CRIU asks again (a task forked while its pages were on the way
 * copies its parent's list, in flight included; a copy into the task that failed, say while an
 * unmap was pending, is asked for anew), the store asks the source again, saying so, and the
 * source, whose CRIU keeps every page, sends those pages once more.
 *
 * The source pushes in address order, the order CRIU's background transfer asks in, so pushed
 * pages are mostly asked for soon after they arrive: they are held in memory, at most `holdBytes`
 * of them, and beyond that the push channel waits (the source then waits for credit). Writing
 * every pushed page to a file first, as the store once did, held a 1 GiB lazy migration to the
 * disk's write rate, about 130 MB/s on the test machine.
 *
 * The source asks CRIU for every page once too, so a page CRIU wants may be in the push channel,
 * behind pages it does not want yet (while the restore runs, or when it takes the tasks in another
 * order than the source pushes them). Whenever a read waits for a page, pushed pages beyond the
 * bound go to a spill file instead of waiting, until the page is here: memory stays bounded and no
 * read waits for good.
 */
export class LazyPageStore implements PageSource {
  private readonly state = new PageTable();
  private readonly held = new Map<number, Map<number, Buffer>>(); // by pid, then page number
  private heldBytes = 0;
  private readonly waiting = new Map<string, Array<() => void>>(); // by "pid:page number": few, faults only
  private readonly asked = new PageTable();
  private roomWaiters: Array<() => void> = [];
  private spill: FileHandle | undefined;
  private spillEnd = 0;
  private readonly spilledAt = new PageTable(); // offset in the spill file
  private dropping = false;
  private failure: Error | undefined;
  private wakeOnFailure!: () => void;
  private readonly failed = new Promise<void>((resolve) => (this.wakeOnFailure = resolve));
  /** Pages that arrived (each counted once). */
  received = 0;
  /** Held pages moved to the spill file because the store stayed full (EVICT_AFTER_MS). */
  evicted = 0;

  constructor(
    private readonly requests: Writable,
    /** The spill file's path; it is created only if a page has to go there. */
    private readonly spillPath: string,
    private readonly holdBytes = DEFAULT_LAZY_HOLD_BYTES,
  ) {}

  /**
   * The store of a destination's session: asks for faults on a LAZY_REQUESTS channel it opens, and
   * takes the pages that arrive on the two lazy channels (answers, and the rest pushed). Call it as
   * soon as the session exists: the channels are listened for before anything is awaited.
   */
  static forSession(session: LinkSession, spillPath: string, holdBytes = DEFAULT_LAZY_HOLD_BYTES): LazyPageStore {
    const store = new LazyPageStore(openChannel(session, ChannelKind.LAZY_REQUESTS, 'lazy-requests').writable, spillPath, holdBytes);
    session.on('channel', (channel) => {
      const answers = channel.kind === ChannelKind.LAZY_ANSWERS;
      const pushed = channel.kind === ChannelKind.LAZY_PUSH && channel.name === LAZY_PUSH_CHANNEL;
      if (!answers && !pushed) return;
      void (async () => {
        for await (const { run, pages } of readPages(channel.readable)) await store.add(run, pages!, { pushed });
      })().catch((error: Error) => session.isOpen && session.abort(`bad lazy pages from the source: ${error.message}`));
    });
    return store;
  }

  /**
   * A run of pages from the proxy, kept as its chunks arrive (a page split across two chunks is
   * joined, no other copy is made). Pushed pages wait for room first, or go to the spill file while
   * a read waits; answers to faults never wait, since CRIU may be waiting for them to ask for the
   * pages that would make room. Once every page was handed over, or the migration is over, late
   * ones are read and dropped.
   */
  async add(run: PageRun, pages: AsyncIterable<Buffer>, options: { readonly pushed?: boolean } = {}): Promise<void> {
    const firstPage = pageOf(run.vaddr);
    let index = 0;
    let partial: Buffer | undefined;
    let partialFill = 0;
    for await (const chunk of pages) {
      const whole: Buffer[] = [];
      let at = 0;
      if (partial) {
        const part = Math.min(PAGE_SIZE - partialFill, chunk.length);
        chunk.copy(partial, partialFill, 0, part);
        partialFill += part;
        at = part;
        if (partialFill === PAGE_SIZE) {
          whole.push(partial);
          partial = undefined;
        }
      }
      const end = at + Math.floor((chunk.length - at) / PAGE_SIZE) * PAGE_SIZE;
      if (end > at) whole.push(chunk.subarray(at, end));
      if (end < chunk.length) {
        partial = Buffer.allocUnsafe(PAGE_SIZE);
        partialFill = chunk.copy(partial, 0, end);
      }
      const spill = options.pushed ? await this.roomOrSpill() : false;
      for (const bytes of whole) {
        const first = firstPage + index;
        index += bytes.length / PAGE_SIZE;
        if (spill) await this.spillPages(run.pid, first, bytes);
        else for (let i = 0; i < bytes.length / PAGE_SIZE; i++) this.keep(run.pid, first + i, bytes.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
      }
    }
  }

  /**
   * Resolves false once there is room in memory, or true while a read waits and there is none.
   * Where no room comes for EVICT_AFTER_MS, the oldest half of what is held goes to the spill file.
   */
  private async roomOrSpill(): Promise<boolean> {
    for (;;) {
      if (this.dropping || this.heldBytes < this.holdBytes) return false;
      if (this.waiting.size > 0) return true;
      let timer: NodeJS.Timeout | undefined;
      const roomCame = await Promise.race([
        new Promise<boolean>((resolve) => this.roomWaiters.push(() => resolve(true))),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), EVICT_AFTER_MS))),
      ]);
      clearTimeout(timer);
      if (!roomCame) await this.evictOldest(this.holdBytes / 2);
    }
  }

  /** The spill file, created on first use; undefined once the migration is over. */
  private async spillFile(): Promise<FileHandle | undefined> {
    if (this.dropping) return undefined;
    if (!this.spill) {
      const file = await open(this.spillPath, 'wx+', 0o600);
      if (this.dropping) return void (await file.close());
      this.spill = file;
    }
    return this.spill;
  }

  /**
   * Moves at least `bytes` of the pages held longest to the spill file, process by process in the
   * order they came. They stay held, and can be handed over, until their copy is written; a page
   * handed over meanwhile is not moved.
   */
  private async evictOldest(bytes: number): Promise<void> {
    const moving: Array<{ pid: number; page: number; bytes: Buffer }> = [];
    for (const [pid, pages] of this.held) {
      for (const [page, pageBytes] of pages) {
        if (moving.length * PAGE_SIZE >= bytes) break;
        moving.push({ pid, page, bytes: pageBytes });
      }
    }
    const spill = moving.length > 0 ? await this.spillFile() : undefined;
    if (!spill) return;
    const offset = this.spillEnd;
    this.spillEnd += moving.length * PAGE_SIZE;
    await spill.write(Buffer.concat(moving.map((page) => page.bytes)), 0, moving.length * PAGE_SIZE, offset).catch((error: unknown) => {
      if (!this.dropping) throw error; // closed while writing: the migration ended meanwhile
    });
    if (this.dropping) return;
    moving.forEach(({ pid, page, bytes: pageBytes }, i) => {
      // handed over meanwhile (and perhaps here again since, in another buffer): not this copy's
      if (this.held.get(pid)?.get(page) !== pageBytes) return;
      this.held.get(pid)!.delete(page);
      this.heldBytes -= PAGE_SIZE;
      this.state.setPage(pid, page, SPILLED);
      this.spilledAt.setPage(pid, page, offset + i * PAGE_SIZE);
      this.evicted++;
    });
  }

  private async spillPages(pid: number, first: number, bytes: Buffer): Promise<void> {
    const spill = await this.spillFile();
    if (!spill) return;
    const offset = this.spillEnd;
    this.spillEnd += bytes.length;
    await spill.write(bytes, 0, bytes.length, offset).catch((error: unknown) => {
      if (!this.dropping) throw error; // closed while writing: the migration ended meanwhile
    });
    for (let i = 0; i < bytes.length / PAGE_SIZE; i++) {
      if (!this.wanted(pid, first + i)) continue;
      this.state.setPage(pid, first + i, SPILLED);
      this.spilledAt.setPage(pid, first + i, offset + i * PAGE_SIZE);
      this.arrived(pid, first + i);
    }
  }

  /** Whether a page that arrives is one the store takes: not here yet, or asked for again. */
  private wanted(pid: number, pageNumber: number): boolean {
    const state = this.state.getPage(pid, pageNumber);
    return !this.dropping && (state === undefined || state === ASKED_AGAIN);
  }

  private keep(pid: number, pageNumber: number, bytes: Buffer): void {
    if (!this.wanted(pid, pageNumber)) return;
    this.state.setPage(pid, pageNumber, HELD);
    let pages = this.held.get(pid);
    if (!pages) this.held.set(pid, (pages = new Map()));
    pages.set(pageNumber, bytes);
    this.heldBytes += PAGE_SIZE;
    this.arrived(pid, pageNumber);
  }

  private arrived(pid: number, pageNumber: number): void {
    this.received++;
    if (this.waiting.size === 0) return;
    const key = `${pid}:${pageNumber}`;
    this.waiting.get(key)?.forEach((wake) => wake());
    this.waiting.delete(key);
  }

  async read(pid: number, vaddr: bigint, nrPages: number): Promise<{ nrPages: number; pages: AsyncIterable<Buffer> }> {
    if (this.failure) throw this.failure;
    // pages handed over before and asked for again: to come from the source once more, saying so
    // (the source skips pages it sent, unless told); asked for again while on the way, they are
    // asked for again, once more
    const firstPage = pageOf(vaddr);
    let again = 0;
    for (let state; again < nrPages && ((state = this.state.getPage(pid, firstPage + again)) === SERVED || state === ASKED_AGAIN); again++) {
      if (state === SERVED) this.received--;
      this.state.setPage(pid, firstPage + again, ASKED_AGAIN);
    }
    const first = this.state.getPage(pid, firstPage);
    if (first !== HELD && first !== SPILLED) {
      const key = `${pid}:${firstPage}`;
      const arrived = new Promise<void>((resolve) => this.waiting.set(key, [...(this.waiting.get(key) ?? []), resolve]));
      this.wakePushes(); // the page may be in the push channel, behind a full store
      if (again > 0) await writePageRequest(this.requests, { pid, vaddr, nrPages: again }, { again: true });
      else if (this.asked.getPage(pid, firstPage) === undefined) {
        this.asked.setPage(pid, firstPage, 1);
        await writePageRequest(this.requests, { pid, vaddr, nrPages });
      }
      await Promise.race([arrived, this.failed]);
      if (this.failure) throw this.failure;
    }
    // the pages here from vaddr on, each handed over once and let go: those in memory joined where
    // they lie next to each other in one chunk of the link, so CRIU's socket gets few large writes
    const pages = this.held.get(pid);
    const taken: Array<Buffer | { readonly offset: number; readonly length: number }> = [];
    // the held pages being joined: where they lie, as numbers until the run breaks (a Buffer per
    // page joined was an allocation per page)
    let joined: { buffer: ArrayBufferLike; byteOffset: number; length: number } | undefined;
    const endJoined = (): void => {
      if (joined) taken.push(Buffer.from(joined.buffer, joined.byteOffset, joined.length));
      joined = undefined;
    };
    let count = 0;
    for (; count < nrPages; count++) {
      const at = firstPage + count;
      const state = this.state.getPage(pid, at);
      if (state === SPILLED) {
        endJoined();
        const offset = this.spilledAt.getPage(pid, at)!;
        this.spilledAt.deletePage(pid, at);
        const last = taken[taken.length - 1];
        if (last && !Buffer.isBuffer(last) && last.offset + last.length === offset && last.length < MAX_PAGES_PER_READ * PAGE_SIZE) taken[taken.length - 1] = { offset: last.offset, length: last.length + PAGE_SIZE };
        else taken.push({ offset, length: PAGE_SIZE });
      } else if (state === HELD) {
        const bytes = pages!.get(at)!;
        pages!.delete(at);
        this.heldBytes -= PAGE_SIZE;
        if (joined && joined.buffer === bytes.buffer && joined.byteOffset + joined.length === bytes.byteOffset) joined.length += bytes.length;
        else {
          endJoined();
          joined = { buffer: bytes.buffer, byteOffset: bytes.byteOffset, length: bytes.length };
        }
      } else break;
      this.state.setPage(pid, at, SERVED);
    }
    endJoined();
    this.makeRoom();
    return { nrPages: count, pages: this.bytesOf(taken) };
  }

  private async *bytesOf(taken: ReadonlyArray<Buffer | { readonly offset: number; readonly length: number }>): AsyncGenerator<Buffer, void, undefined> {
    for (const part of taken) {
      if (Buffer.isBuffer(part)) {
        yield part;
        continue;
      }
      if (!this.spill) throw this.failure ?? new Error('the lazy page store was closed while an answer was read from it');
      const bytes = Buffer.allocUnsafe(part.length);
      const { bytesRead } = await this.spill.read(bytes, 0, part.length, part.offset);
      if (bytesRead !== part.length) throw new Error(`the lazy pages' spill file ends before offset ${part.offset + part.length}`);
      yield bytes;
    }
  }

  /** Lets a push waiting for room look again: there is room, or a read waits. */
  private wakePushes(): void {
    const waiters = this.roomWaiters;
    this.roomWaiters = [];
    for (const wake of waiters) wake();
  }

  private makeRoom(): void {
    if (this.heldBytes < this.holdBytes || this.dropping) this.wakePushes();
  }

  /**
   * `criu lazy-pages` has every page it will ask for: what still comes (pushes that crossed its
   * last answers on the link) is dropped, so the source's push channel drains.
   */
  allServed(): void {
    this.dropping = true;
    this.held.clear();
    this.heldBytes = 0;
    this.wakePushes();
  }

  /** The source can no longer send pages: every read waiting for one fails now, and later ones at once. */
  fail(error: Error): void {
    this.failure ??= error;
    this.wakeOnFailure();
  }

  /** The migration is over: nothing more is kept. */
  async close(): Promise<void> {
    this.allServed();
    const spill = this.spill;
    this.spill = undefined;
    await spill?.close();
  }
}
