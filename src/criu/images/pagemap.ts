import { createWriteStream, type WriteStream } from 'node:fs';
import { open, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { once } from 'node:events';
import { discardWriting, finishWriting, writeChunk } from '../../streams/writable-writes.js';
import { PAGE_SIZE, PageFlag, type PagemapTarget } from '../page-server/protocol.js';
import { ImageReader, lengthPrefix } from './image-file.js';
import { TypeMagic, headerBytes, type ImageHeader } from './magic.js';
import { Entries, ImageFormatError, type PagemapEntryMessage } from './schemas.js';

export const PAGEMAP_HEADER: ImageHeader = { kind: 'common', typeMagic: TypeMagic.PAGEMAP };

/** One run of pages in a pagemap, with CRIU's compatibility rules already applied. */
export interface PagemapEntry {
  readonly vaddr: bigint;
  readonly nrPages: number;
  /** PageFlag bits: PRESENT (data in the pages image), LAZY, PARENT. */
  readonly flags: number;
}

export function pagemapFileName(target: PagemapTarget): string {
  return target.type === 'pid' ? `pagemap-${target.id}.img` : `pagemap-shmem-${target.id}.img`;
}

export function pagesFileName(pagesId: number): string {
  return `pages-${pagesId}.img`;
}

/** Whether `name` is a pagemap image, a task's or a shared memory segment's (as pagemapFileName names them). */
export function isPagemapFileName(name: string): boolean {
  return /^pagemap-(shmem-)?\d+\.img$/.test(name);
}

/** Whether `name` is a pages image (raw page data, as pagesFileName names them). */
export function isPagesFileName(name: string): boolean {
  return /^pages-\d+\.img$/.test(name);
}

/** How many pages of data the pages images in `dir` hold. */
export async function pagesStoredIn(dir: string): Promise<number> {
  let bytes = 0;
  for (const name of (await readdir(dir)).filter(isPagesFileName)) bytes += (await stat(join(dir, name))).size;
  return bytes / PAGE_SIZE;
}

// criu/pagemap.c init_compat_pagemap_entry: an entry without flags is PARENT if in_parent, else
// PRESENT; CRIU 4.2 moved the page count to field 5 and writes 0 in field 2.
export function entryFromMessage(message: PagemapEntryMessage): PagemapEntry {
  const nrPages = message.nr_pages !== undefined ? message.nr_pages : BigInt(message.compat_nr_pages);
  if (nrPages > BigInt(Number.MAX_SAFE_INTEGER)) throw new ImageFormatError(`pagemap entry of ${nrPages} pages`);
  const flags = message.flags ?? (message.in_parent ? PageFlag.PARENT : PageFlag.PRESENT);
  return { vaddr: message.vaddr, nrPages: Number(nrPages), flags };
}

/** The entry as CRIU ≤ 4.1 writes it (field 2 for the count), which every CRIU since reads. */
export function entryToMessage(entry: PagemapEntry): PagemapEntryMessage {
  return { vaddr: entry.vaddr, compat_nr_pages: entry.nrPages, flags: entry.flags };
}

/** A pagemap read from disk: its entries, and where each PRESENT entry's pages start in its pages image. */
export interface Pagemap {
  readonly pagesId: number;
  readonly entries: ReadonlyArray<PagemapEntry & { readonly pagesOffset: number }>;
}

export async function readPagemap(dir: string, target: PagemapTarget): Promise<Pagemap> {
  const image = await ImageReader.openFile(join(dir, pagemapFileName(target)), PAGEMAP_HEADER);
  try {
    const head = await image.next();
    if (head === null) throw new ImageFormatError(`${pagemapFileName(target)} has no pagemap head`);
    const { pages_id: pagesId } = Entries.pagemapHead.decode(head);
    const entries: Array<PagemapEntry & { pagesOffset: number }> = [];
    let offset = 0;
    for await (const bytes of image.entries()) {
      const entry = entryFromMessage(Entries.pagemapEntry.decode(bytes));
      entries.push({ ...entry, pagesOffset: offset });
      if (entry.flags & PageFlag.PRESENT) offset += entry.nrPages * PAGE_SIZE;
    }
    return { pagesId, entries };
  } finally {
    image.close();
  }
}

/** The most pages an entry may count in its compat field (a uint32, images/pagemap.proto). */
const MAX_COMPAT_PAGES = 0xffff_ffff;

/**
 * Rewrites every pagemap in `dir` that counts its pages in CRIU 4.2's field (nr_pages, with 0 in
 * compat_nr_pages) into the form every CRIU reads: the count in compat_nr_pages, nothing else
 * changed. CRIU before 4.2 reads only compat_nr_pages, so it would find every entry empty (the
 * restore then fails on the missing vdso first, criu/pie/util-vdso.c "ELF header magic
 * mismatch"); CRIU 4.2 reads compat_nr_pages where nr_pages is absent (criu/pagemap.c
 * init_compat_pagemap_entry). For a directory of haul's own: each file is written anew beside the
 * old, then renamed over it. Resolves how many files were rewritten.
 */
export async function writePagemapsForEveryCriu(dir: string): Promise<number> {
  let rewritten = 0;
  for (const name of (await readdir(dir)).filter(isPagemapFileName)) {
    const path = join(dir, name);
    if (!(await countsInNewField(path))) continue;
    const temporary = `${path}.compat`;
    const out = await open(temporary, 'wx', 0o644);
    try {
      const image = await ImageReader.openFile(path, PAGEMAP_HEADER);
      try {
        const head = await image.next();
        if (head === null) throw new ImageFormatError(`${name} has no pagemap head`);
        await out.write(Buffer.concat([headerBytes(PAGEMAP_HEADER), lengthPrefix(head.length), head]));
        for await (const bytes of image.entries()) {
          const { nr_pages: pages, ...rest } = Entries.pagemapEntry.decode(bytes);
          if (pages !== undefined && pages > BigInt(MAX_COMPAT_PAGES)) throw new ImageFormatError(`${name}: an entry of ${pages} pages does not fit the count CRIU before 4.2 reads`);
          const entry = Entries.pagemapEntry.encode(pages === undefined ? { ...rest } : { ...rest, compat_nr_pages: Number(pages) });
          await out.write(Buffer.concat([lengthPrefix(entry.length), entry]));
        }
      } finally {
        image.close();
      }
      await out.close();
      await rename(temporary, path);
      rewritten++;
    } catch (error) {
      await out.close().catch(() => {});
      await rm(temporary, { force: true });
      throw error;
    }
  }
  return rewritten;
}

/** Whether any entry of the pagemap at `path` counts its pages in nr_pages (CRIU 4.2's field). */
async function countsInNewField(path: string): Promise<boolean> {
  const image = await ImageReader.openFile(path, PAGEMAP_HEADER);
  try {
    await image.next();
    for await (const bytes of image.entries()) if (Entries.pagemapEntry.decode(bytes).nr_pages !== undefined) return true;
    return false;
  } finally {
    image.close();
  }
}

/** A run of pages `criu dump --lazy-pages` left in the dumped task's memory, for its lazy page server. */
export interface LazyRun {
  readonly pid: number;
  readonly vaddr: bigint;
  readonly nrPages: number;
}

/**
 * The lazy runs of a `criu dump --lazy-pages` written to `dir`: entries of the task pagemaps that
 * are LAZY and not PRESENT (their pages are not in the pages image; criu/page-xfer.c).
 */
export async function lazyRunsIn(dir: string): Promise<LazyRun[]> {
  const runs: LazyRun[] = [];
  const pids = (await readdir(dir)).map((name) => /^pagemap-(\d+)\.img$/.exec(name)?.[1]).filter((pid) => pid !== undefined).map(Number).sort((a, b) => a - b);
  for (const pid of pids) {
    for (const entry of (await readPagemap(dir, { type: 'pid', id: pid })).entries) {
      if (entry.flags & PageFlag.LAZY && !(entry.flags & PageFlag.PRESENT)) runs.push({ pid, vaddr: entry.vaddr, nrPages: entry.nrPages });
    }
  }
  return runs;
}

/** A file written as a stream: a failure stays in `stream.errored`, which the next write or close rejects with. */
function imageFileStream(path: string, options: { highWaterMark?: number } = {}): WriteStream {
  const stream = createWriteStream(path, { mode: 0o644, ...options });
  stream.on('error', () => {});
  return stream;
}

/**
 * Writes one pagemap and its pages image into an image directory, as CRIU's own page server does
 * (criu/page-xfer.c): the head names the pages image, then one entry per run, and the pages of
 * PRESENT runs are appended to the pages image in the same order. Page data is streamed through.
 */
export class PagemapWriter {
  private pagesWritten = 0;

  private constructor(
    readonly target: PagemapTarget,
    private readonly pagemap: WriteStream,
    private readonly pages: WriteStream,
  ) {}

  static async create(dir: string, target: PagemapTarget, pagesId: number): Promise<PagemapWriter> {
    const pagemap = imageFileStream(join(dir, pagemapFileName(target)));
    // page data arrives in socket-sized chunks; a large buffer lets them go to disk in big writes
    const pages = imageFileStream(join(dir, pagesFileName(pagesId)), { highWaterMark: 4 * 1024 * 1024 });
    const writer = new PagemapWriter(target, pagemap, pages);
    try {
      await Promise.all([once(pagemap, 'open'), once(pages, 'open')]);
      const head = Entries.pagemapHead.encode({ pages_id: pagesId });
      await writeChunk(pagemap, Buffer.concat([headerBytes(PAGEMAP_HEADER), lengthPrefix(head.length), head]));
    } catch (error) {
      await writer.destroy();
      throw error;
    }
    return writer;
  }

  /** Appends an entry; a PRESENT entry's pages must follow as exactly nrPages pages of bytes. */
  async add(entry: PagemapEntry, pages?: AsyncIterable<Buffer>): Promise<void> {
    const bytes = Entries.pagemapEntry.encode(entryToMessage(entry));
    await writeChunk(this.pagemap, Buffer.concat([lengthPrefix(bytes.length), bytes]));
    const expected = entry.flags & PageFlag.PRESENT ? entry.nrPages * PAGE_SIZE : 0;
    let received = 0;
    for await (const chunk of pages ?? []) {
      received += chunk.length;
      if (received > expected) throw new ImageFormatError(`more page data than the ${entry.nrPages} pages announced`);
      await writeChunk(this.pages, chunk);
    }
    if (received !== expected) throw new ImageFormatError(`${received} bytes of pages for an entry of ${expected}`);
    this.pagesWritten += entry.flags & PageFlag.PRESENT ? entry.nrPages : 0;
  }

  async close(): Promise<number> {
    await Promise.all([finishWriting(this.pagemap), finishWriting(this.pages)]);
    return this.pagesWritten;
  }

  /** Drops both files' streams (what they hold stays on disk, incomplete); resolves once they are closed, and never rejects. */
  async destroy(): Promise<void> {
    await Promise.all([discardWriting(this.pagemap), discardWriting(this.pages)]);
  }
}

/** Reads page data of a pages image by offset, in bounded chunks. */
export class PagesFile {
  private constructor(private readonly handle: FileHandle) {}

  static async open(dir: string, pagesId: number): Promise<PagesFile> {
    return new PagesFile(await open(join(dir, pagesFileName(pagesId)), 'r'));
  }

  async *read(offset: number, length: number, chunkSize = 256 * 1024): AsyncGenerator<Buffer, void, undefined> {
    for (let done = 0; done < length; ) {
      const size = Math.min(chunkSize, length - done);
      const chunk = Buffer.allocUnsafe(size);
      const { bytesRead } = await this.handle.read(chunk, 0, size, offset + done);
      if (bytesRead !== size) throw new ImageFormatError(`pages image ends before offset ${offset + done + size}`);
      done += size;
      yield chunk;
    }
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}
