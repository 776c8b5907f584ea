import { Readable, Writable } from 'node:stream';
import { PAGE_SIZE, PageFlag } from '../../../src/criu/page-server/protocol.js';
import { TruncatedStreamError } from '../../../src/streams/stream-reader.js';
import { LazyWireError, readPageRequests, readPages, writePageRequest, writePages, type PageRun } from '../../../proxy/lazy-wire.js';
import { PageStreamError, readPageRecords, writePageRecord } from '../../../proxy/page-stream.js';
import { MigrationMessageError } from '../../../proxy/wire/messages.js';
import { pagesOf } from '../../support/page-server-streams.js';
import { InvariantBroken, type FuzzTarget } from '../fuzzer.js';
import { chunked } from '../mutations.js';

async function written(write: (channel: Writable) => Promise<void>): Promise<Buffer> {
  const parts: Buffer[] = [];
  const channel = new Writable({ write: (chunk: Buffer, _encoding, done) => (parts.push(chunk), done()) });
  await write(channel);
  return Buffer.concat(parts);
}

const RUNS: readonly PageRun[] = [
  { pid: 7, vaddr: 0x10000n, nrPages: 1 },
  { pid: 4242, vaddr: 0x7ffc00000000n, nrPages: 3 },
  { pid: 1, vaddr: 0n, nrPages: 1024 },
];

// an accepted PageRun record is its length byte and at least one field, a tag and a value: the lazy
// readers refuse a run without pages, the page-stream reader one without flags
const MIN_RECORD = 3;

let lazySeeds: Buffer[] = [];
let pageSeeds: Buffer[] = [];


export const lazyWire: FuzzTarget = {
  name: 'lazy-wire',
  decoder: 'proxy/lazy-wire.ts readPageRequests / readPages (page records on the lazy channels; the first byte picks the reader)',
  expected: [LazyWireError, MigrationMessageError, TruncatedStreamError],
  async open() {
    const requests = await written(async (channel) => {
      for (const run of RUNS) await writePageRequest(channel, run);
    });
    const answers = await written(async (channel) => {
      for (const run of RUNS.slice(0, 2)) {
        await writePages(channel, run, (async function* () {
          yield pagesOf(run.vaddr, run.nrPages);
        })());
      }
    });
    lazySeeds = [Buffer.concat([Buffer.from([0]), requests]), Buffer.concat([Buffer.from([1]), answers])];
  },
  seeds: () => lazySeeds,
  async run(input, random) {
    const channel = Readable.from(chunked(input.subarray(1), random));
    let records = 0;
    let bytes = 0;
    if ((input[0] ?? 0) % 2 === 0) {
      for await (const { run } of readPageRequests(channel)) {
        if (run.nrPages < 1 || run.nrPages > 1024) throw new InvariantBroken(`a request for ${run.nrPages} pages`);
        records++;
      }
    } else {
      for await (const { run, pages } of readPages(channel)) {
        let got = 0;
        for await (const chunk of pages!) got += chunk.length;
        if (got !== run.nrPages * PAGE_SIZE) throw new InvariantBroken(`${got} bytes for a run of ${run.nrPages} pages`);
        bytes += got;
        records++;
      }
    }
    if (records * MIN_RECORD + bytes > input.length) throw new InvariantBroken(`${records} records and ${bytes} bytes from ${input.length} bytes`);
    return records;
  },
};

const KNOWN_FLAGS = PageFlag.PRESENT | PageFlag.LAZY | PageFlag.PARENT;

export const pageStream: FuzzTarget = {
  name: 'page-stream',
  decoder: 'proxy/page-stream.ts readPageRecords (a pagemap\'s entries and pages on a PAGES channel)',
  expected: [PageStreamError, MigrationMessageError, TruncatedStreamError],
  async open() {
    pageSeeds = [
      await written(async (channel) => {
        await writePageRecord(channel, { vaddr: 0x400000n, nrPages: 2, flags: PageFlag.PRESENT }, (async function* () {
          yield pagesOf(0x400000n, 2);
        })());
        await writePageRecord(channel, { vaddr: 0x800000n, nrPages: 100, flags: PageFlag.LAZY }, undefined);
        await writePageRecord(channel, { vaddr: 0x900000n, nrPages: 1, flags: PageFlag.PARENT }, undefined);
      }),
    ];
  },
  seeds: () => pageSeeds,
  async run(input, random) {
    let bytes = 0;
    let records = 0;
    for await (const { entry, pages } of readPageRecords(Readable.from(chunked(input, random)))) {
      // the cache writes what it is given into a pagemap image that CRIU restores from
      if ((entry.flags & ~KNOWN_FLAGS) !== 0 || entry.flags === 0) {
        throw new InvariantBroken(`a page record of ${entry.nrPages} pages with flags 0x${entry.flags.toString(16)}`);
      }
      let got = 0;
      for await (const chunk of pages ?? []) got += chunk.length;
      if (got !== (entry.flags & PageFlag.PRESENT ? entry.nrPages * PAGE_SIZE : 0)) throw new InvariantBroken(`${got} bytes for ${entry.nrPages} pages`);
      bytes += got;
      records++;
    }
    if (records * MIN_RECORD + bytes > input.length) throw new InvariantBroken(`${records} records and ${bytes} bytes from ${input.length} bytes`);
    return records;
  },
};
