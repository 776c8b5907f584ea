import { writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { encodeImage, ImageReader, MAX_ENTRY_SIZE } from '../../../src/criu/images/image-file.js';
import { TypeMagic, type ImageHeader } from '../../../src/criu/images/magic.js';
import { PAGEMAP_HEADER, entryFromMessage, pagemapFileName, readPagemap } from '../../../src/criu/images/pagemap.js';
import { Entries, ImageFormatError, type EntryCodec } from '../../../src/criu/images/schemas.js';
import { PageFlag } from '../../../src/criu/page-server/protocol.js';
import { InvariantBroken, type FuzzTarget } from '../fuzzer.js';
import { chunked } from '../mutations.js';

const CODECS: ReadonlyArray<EntryCodec<unknown>> = [Entries.pagemapHead, Entries.pagemapEntry, Entries.pstreeEntry, Entries.inventoryEntry, Entries.statsEntry] as ReadonlyArray<EntryCodec<unknown>>;

const ENTRIES: ReadonlyArray<readonly [number, Buffer]> = [
  [0, Entries.pagemapHead.encode({ pages_id: 3 })],
  [1, Entries.pagemapEntry.encode({ vaddr: 0x7ffd00000000n, compat_nr_pages: 0, flags: PageFlag.PRESENT, nr_pages: 0x1_0000_0000n })],
  [1, Entries.pagemapEntry.encode({ vaddr: 0x400000n, compat_nr_pages: 4, in_parent: true })],
  [2, Entries.pstreeEntry.encode({ pid: 1, ppid: 0, pgid: 1, sid: 1, threads: [1, 2, 3] })],
  [3, Entries.inventoryEntry.encode({ img_version: 2, fdinfo_per_id: true, root_ids: { vm_id: 1, files_id: 2, fs_id: 3, sighand_id: 4, time_ns_id: 9 }, dump_uptime: 123456789n, plugins_entry: { plugins: ['amdgpu'] }, dump_criu_run_id: 'run' })],
  [4, Entries.statsEntry.encode({ dump: { freezing_time: 1, frozen_time: 2, memdump_time: 3, memwrite_time: 4, pages_scanned: 5n, pages_skipped_parent: 6n, pages_written: 7n, pages_lazy: 8n, page_pipes: 1n } })],
];

export const imageEntries: FuzzTarget = {
  name: 'image-entries',
  decoder: 'src/criu/images/schemas.ts Entries.*.decode and pagemap.ts entryFromMessage (the first byte picks the schema)',
  expected: [ImageFormatError],
  seeds: () => ENTRIES.map(([codec, bytes]) => Buffer.concat([Buffer.from([codec]), bytes])),
  run(input) {
    const index = (input[0] ?? 0) % CODECS.length;
    const message = CODECS[index]!.decode(input.subarray(1));
    if (typeof message !== 'object' || message === null) throw new InvariantBroken(`an entry decoded to ${String(message)}`);
    if (CODECS[index] === Entries.pagemapEntry) {
      const entry = entryFromMessage(message as Parameters<typeof entryFromMessage>[0]);
      if (typeof entry.vaddr !== 'bigint' || !Number.isSafeInteger(entry.nrPages) || entry.nrPages < 0) {
        throw new InvariantBroken(`a pagemap entry of ${entry.nrPages} pages at ${String(entry.vaddr)}`);
      }
      return entry;
    }
    return message;
  },
};

const IMAGES: ReadonlyArray<{ header: ImageHeader; entries: number[] }> = [
  { header: { kind: 'common', typeMagic: TypeMagic.PSTREE }, entries: [3, 3] },
  { header: PAGEMAP_HEADER, entries: [0, 1, 2] },
  { header: { kind: 'inventory' }, entries: [4] },
  { header: { kind: 'service', typeMagic: TypeMagic.STATS }, entries: [5] },
];

/** Each image with the schema of its entries: the codec of entry i is schemas[min(i, last)]. */
const SCHEMAS: Record<string, readonly number[]> = {
  [`common ${TypeMagic.PSTREE}`]: [2],
  [`common ${TypeMagic.PAGEMAP}`]: [0, 1],
  inventory: [3],
  [`service ${TypeMagic.STATS}`]: [4],
};

export const imageFile: FuzzTarget = {
  name: 'image-file',
  decoder: 'src/criu/images/image-file.ts ImageReader (header, then length-prefixed entries, each decoded)',
  expected: [ImageFormatError],
  seeds: () => IMAGES.map(({ header, entries }) => encodeImage(header, entries.map((at) => ENTRIES[at]![1]))),
  async run(input, random) {
    const image = await ImageReader.open(Readable.from(chunked(input, random)), 'fuzz.img');
    const key = image.header.kind === 'inventory' ? 'inventory' : `${image.header.kind} ${image.header.typeMagic}`;
    const schemas = SCHEMAS[key] ?? [];
    let index = 0;
    let bytes = 0;
    for await (const entry of image.entries()) {
      if (entry.length > MAX_ENTRY_SIZE) throw new InvariantBroken(`an entry of ${entry.length} bytes`);
      bytes += entry.length + 4;
      if (schemas.length > 0) CODECS[schemas[Math.min(index, schemas.length - 1)]!]!.decode(entry);
      index++;
    }
    if (bytes > input.length) throw new InvariantBroken(`${bytes} bytes of entries from ${input.length} bytes`);
    return index;
  },
};

let pagemapDir: string | undefined;

export const pagemapFile: FuzzTarget = {
  name: 'pagemap-file',
  decoder: 'src/criu/images/pagemap.ts readPagemap (a pagemap image on disk)',
  expected: [ImageFormatError],
  async open() {
    pagemapDir = await mkdtemp(join(tmpdir(), 'haul-fuzz-pagemap-'));
  },
  async close() {
    if (pagemapDir) await rm(pagemapDir, { recursive: true, force: true });
    pagemapDir = undefined;
  },
  seeds: () => [
    encodeImage(PAGEMAP_HEADER, [ENTRIES[0]![1], ENTRIES[1]![1], ENTRIES[2]![1]]),
    encodeImage(PAGEMAP_HEADER, [ENTRIES[0]![1]]),
    encodeImage(PAGEMAP_HEADER, [ENTRIES[0]![1], ...Array.from({ length: 8 }, (_, i) => Entries.pagemapEntry.encode({ vaddr: 0x400000n + BigInt(i) * 0x10000n, compat_nr_pages: 1 + i, flags: i % 2 ? PageFlag.LAZY : PageFlag.PRESENT }))]),
  ],
  async run(input) {
    const target = { type: 'pid', id: 1 } as const;
    writeFileSync(join(pagemapDir!, pagemapFileName(target)), input);
    const pagemap = await readPagemap(pagemapDir!, target);
    let offset = 0;
    for (const entry of pagemap.entries) {
      if (entry.pagesOffset !== offset || !Number.isSafeInteger(entry.nrPages)) throw new InvariantBroken(`an entry of ${entry.nrPages} pages at pages offset ${entry.pagesOffset}`);
      if (entry.flags & PageFlag.PRESENT) offset += entry.nrPages * 4096;
    }
    return pagemap;
  },
};
