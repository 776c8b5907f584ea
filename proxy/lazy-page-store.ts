import { open, type FileHandle } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import type { PageSource } from '../src/criu/page-server/lazy-pages-server.js';
import { PAGE_SIZE } from '../src/criu/page-server/protocol.js';
import { writePageRequest, type PageRun } from './lazy-wire.js';

const page = BigInt(PAGE_SIZE);

/**
 * The cache's side of lazy mode: keeps the pages the proxy sends (asked for or pushed ahead) in a
 * file, and answers the destination's `criu lazy-pages` from it. A page it does not have yet is
 * asked for from the source, and the answer waits for it; CRIU accepts short answers, so an answer
 * covers the run of pages present from the one asked for on.
 */
export class LazyPageStore implements PageSource {
  private readonly where = new Map<string, number>(); // "pid:page index" -> offset in the file
  private readonly waiting = new Map<string, Array<() => void>>();
  private readonly asked = new Set<string>();
  private end = 0;
  private closed = false;
  private failure: Error | undefined;
  received = 0;

  private constructor(
    private readonly file: FileHandle,
    private readonly requests: Writable,
  ) {}

  static async create(path: string, requests: Writable): Promise<LazyPageStore> {
    return new LazyPageStore(await open(path, 'w+', 0o600), requests);
  }

  private key(pid: number, vaddr: bigint): string {
    return `${pid}:${vaddr / page}`;
  }

  /** Pages from the proxy; once the migration is over (closed), late ones are dropped. */
  async add(run: PageRun, pages: Buffer): Promise<void> {
    if (this.closed) return;
    const offset = this.end;
    this.end += pages.length;
    try {
      await this.file.write(pages, 0, pages.length, offset);
    } catch (error) {
      if (this.closed) return; // closed while writing: the migration ended meanwhile
      throw error;
    }
    for (let i = 0; i < run.nrPages; i++) {
      const key = this.key(run.pid, run.vaddr + BigInt(i) * page);
      if (this.where.has(key)) continue;
      this.where.set(key, offset + i * PAGE_SIZE);
      this.received++;
      for (const wake of this.waiting.get(key) ?? []) wake();
      this.waiting.delete(key);
    }
  }

  async read(pid: number, vaddr: bigint, nrPages: number): Promise<{ nrPages: number; pages: AsyncIterable<Buffer> }> {
    const first = this.key(pid, vaddr);
    if (this.failure) throw this.failure;
    if (!this.where.has(first)) {
      const arrived = new Promise<void>((resolve) => this.waiting.set(first, [...(this.waiting.get(first) ?? []), resolve]));
      if (!this.asked.has(first)) {
        this.asked.add(first);
        await writePageRequest(this.requests, { pid, vaddr, nrPages });
      }
      await arrived;
      if (this.failure) throw this.failure;
    }
    const offsets: number[] = [];
    for (let i = 0; i < nrPages; i++) {
      const offset = this.where.get(this.key(pid, vaddr + BigInt(i) * page));
      if (offset === undefined) break;
      offsets.push(offset);
    }
    const file = this.file;
    // pages pushed in one run sit next to each other in the file: read each such stretch at once
    async function* pages(): AsyncGenerator<Buffer, void, undefined> {
      for (let i = 0; i < offsets.length; ) {
        let run = 1;
        while (i + run < offsets.length && offsets[i + run] === offsets[i]! + run * PAGE_SIZE) run++;
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
    for (const wakes of this.waiting.values()) wakes.forEach((wake) => wake());
    this.waiting.clear();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.file.close();
  }
}
