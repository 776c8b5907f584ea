import type { PagemapSink } from '../../src/criu/page-server/dump-receiver.js';
import type { PageSource } from '../../src/criu/page-server/lazy-pages-server.js';
import { Command, PAGE_SIZE, PageFlag, encodeHeader, encodeTarget, type HeaderLayout, type PagemapTarget } from '../../src/criu/page-server/protocol.js';
import type { PagemapEntry } from '../../src/criu/images/pagemap.js';

/** A page whose bytes say which page it is, so misplaced data shows. */
export function pageOf(vaddr: bigint): Buffer {
  const page = Buffer.alloc(PAGE_SIZE, Number(vaddr / BigInt(PAGE_SIZE)) & 0xff);
  page.writeBigUInt64LE(vaddr, 0);
  return page;
}

export function pagesOf(vaddr: bigint, nrPages: number): Buffer {
  return Buffer.concat(Array.from({ length: nrPages }, (_, i) => pageOf(vaddr + BigInt(i * PAGE_SIZE))));
}

export interface SyntheticPagemap {
  readonly target: PagemapTarget;
  readonly entries: readonly PagemapEntry[];
}

/** The bytes `criu dump --page-server` sends for these pagemaps: OPEN2, ADD_F (+ pages), …, CLOSE. */
export function dumpStream(layout: HeaderLayout, pagemaps: readonly SyntheticPagemap[]): Buffer {
  const parts: Buffer[] = [];
  for (const { target, entries } of pagemaps) {
    parts.push(encodeHeader({ cmd: Command.OPEN2, nrPages: 0n, vaddr: 0n, dstId: encodeTarget(target) }, layout));
    for (const entry of entries) {
      parts.push(encodeHeader({ cmd: (entry.flags << 16) | Command.ADD_F, nrPages: BigInt(entry.nrPages), vaddr: entry.vaddr, dstId: encodeTarget(target) }, layout));
      if (entry.flags & PageFlag.PRESENT) parts.push(pagesOf(entry.vaddr, entry.nrPages));
    }
  }
  parts.push(encodeHeader({ cmd: Command.CLOSE, nrPages: 0n, vaddr: 0n, dstId: 0n }, layout));
  return Buffer.concat(parts);
}

/** A sink that keeps what it is given in memory (tests only: pages of small synthetic dumps). */
export class MemorySink implements PagemapSink {
  readonly pagemaps: Array<{ target: PagemapTarget; entries: PagemapEntry[]; pages: Buffer[] }> = [];
  finished = false;

  async beginPagemap(target: PagemapTarget): Promise<void> {
    this.pagemaps.push({ target, entries: [], pages: [] });
  }
  async addEntry(entry: PagemapEntry, pages: AsyncIterable<Buffer> | undefined): Promise<void> {
    const current = this.pagemaps[this.pagemaps.length - 1]!;
    current.entries.push(entry);
    for await (const chunk of pages ?? []) current.pages.push(Buffer.from(chunk));
  }
  async endPagemap(): Promise<void> {}
  async finish(): Promise<void> {
    this.finished = true;
  }
}

/** A sink that counts and drops page data, so fuzzing never holds what a hostile stream promises. */
export class CountingSink implements PagemapSink {
  bytes = 0;
  async beginPagemap(): Promise<void> {}
  async addEntry(_entry: PagemapEntry, pages: AsyncIterable<Buffer> | undefined): Promise<void> {
    for await (const chunk of pages ?? []) this.bytes += chunk.length;
  }
  async endPagemap(): Promise<void> {}
  async finish(): Promise<void> {}
}

/** Pages generated on demand from one run per task, answering short at the run's end. */
export class SyntheticPageSource implements PageSource {
  constructor(private readonly runs: ReadonlyMap<number, { vaddr: bigint; nrPages: number }>) {}

  async read(pid: number, vaddr: bigint, nrPages: number): Promise<{ nrPages: number; pages: AsyncIterable<Buffer> }> {
    const run = this.runs.get(pid);
    const end = run ? run.vaddr + BigInt(run.nrPages * PAGE_SIZE) : 0n;
    if (!run || vaddr < run.vaddr || vaddr >= end) throw new Error(`no page of ${pid} at 0x${vaddr.toString(16)}`);
    const count = Math.min(nrPages, Number((end - vaddr) / BigInt(PAGE_SIZE)));
    async function* pages(): AsyncGenerator<Buffer> {
      yield pagesOf(vaddr, count);
    }
    return { nrPages: count, pages: pages() };
  }
}
