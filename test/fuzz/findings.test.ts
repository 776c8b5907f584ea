import { readdirSync, writeFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { HookProtocolError, parseHookRequest } from '../../plugin/hook-protocol.js';
import { LazyWireError, readPageRequests, readPages } from '../../proxy/lazy-wire.js';
import { PageStreamError, readPageRecords, targetOfPageChannel } from '../../proxy/page-stream.js';
import { pageRunRecord } from '../../proxy/wire/page-records.js';
import { MigrationMessageError } from '../../proxy/wire/messages.js';
import { receiveDump } from '../../src/criu/page-server/dump-receiver.js';
import { serveLazyPages } from '../../src/criu/page-server/lazy-pages-server.js';
import { Command, PageFlag, PageServerProtocolError, encodeHeader, encodeTarget } from '../../src/criu/page-server/protocol.js';
import { encodeImage } from '../../src/criu/images/image-file.js';
import { BadNameError } from '../../src/name-grammars.js';
import { PAGEMAP_HEADER, readPagemap } from '../../src/criu/images/pagemap.js';
import { Entries, ImageFormatError } from '../../src/criu/images/schemas.js';
import { memoryConnection } from '../support/memory-connection.js';
import { scratchDir } from '../support/scratch.js';
import { CountingSink, SyntheticPageSource } from '../support/page-server-streams.js';

async function drain(records: AsyncIterable<object>): Promise<void> {
  for await (const record of records) for await (const chunk of (record as { pages?: AsyncIterable<Buffer> }).pages ?? []) void chunk;
}

/** Each failure the fuzzer found and this change fixed, replayed from its input. */
describe('fuzz findings, fixed', () => {
  describe("the agent's hook requests are checked before a role gets them", () => {
    it('takes the request as the hook writes it', () => {
      expect(parseHookRequest('{"call":"restore","pid":812,"args":["restore","-D","/tmp/a \\"dir\\"\\u000a"]}')).toEqual({ call: 'restore', pid: 812, args: ['restore', '-D', '/tmp/a "dir"\n'] });
      expect(parseHookRequest('{"call":"dump","args":[]}')).toEqual({ call: 'dump', args: [] });
      // how long the hook waits for the answer (one dump deadline across all peers)
      expect(parseHookRequest('{"call":"dump","args":[],"pid":7,"answer_within_ms":30000}')).toEqual({ call: 'dump', args: [], pid: 7, answer_within_ms: 30000 });
      for (const wait of ['-1', '0', '1.5', '"30000"', '1e12']) expect(() => parseHookRequest(`{"call":"dump","args":[],"answer_within_ms":${wait}}`), wait).toThrow(HookProtocolError);
    });

    it('refuses a call other than dump or restore, which the agent used to hand to the destination role as a restore', () => {
      expect(() => parseHookRequest('{"call":"check","pid":1,"args":["check"]}')).toThrow(HookProtocolError);
    });

    it('refuses what is not a list of string arguments or a process id', () => {
      for (const line of ['', 'null', '[]', '"dump"', '{"call":"dump"}', '{"call":"dump","args":"-D /"}', '{"call":"dump","args":[1]}', '{"call":"dump","args":[],"pid":-1}', '{"call":"dump","args":[],"pid":1.5}', '{"call":"dump","args":[],"pid":"1"}']) {
        expect(() => parseHookRequest(line), line).toThrow(HookProtocolError);
      }
    });
  });

  describe('a lazy page record of a page count CRIU never asks for is refused with an error of the lazy wire', () => {
    // lazy-wire target, seed 1: the record {pid 7, 33686018 pages} ended in a plain Error
    for (const nrPages of [0, 33686018, 1025]) {
      it(`a run of ${nrPages} pages`, async () => {
        const record = pageRunRecord({ pid: 7, vaddr: 0x10000n, nr_pages: nrPages });
        await expect(drain(readPageRequests(Readable.from([record])))).rejects.toBeInstanceOf(LazyWireError);
        await expect(drain(readPages(Readable.from([record])))).rejects.toBeInstanceOf(LazyWireError);
      });
    }

    it('a record longer than any PageRun, or one that does not decode, is refused as a malformed message', async () => {
      for (const bytes of [Buffer.from([33, ...Buffer.alloc(33)]), Buffer.from([2, 0x08, 0xff])]) {
        await expect(drain(readPageRequests(Readable.from([bytes])))).rejects.toBeInstanceOf(MigrationMessageError);
      }
    });
  });

  describe('a page-server command for an address inside a page is refused before anything reads or writes pages there', () => {
    // lazy-pages-server target, seed 1: a GET of 1024 pages at 0x4f001 reached the page source,
    // which had no whole page there to answer with
    it('GET', async () => {
      const request = Buffer.concat([
        encodeHeader({ cmd: Command.GET, nrPages: 1024n, vaddr: 0x4f001n, dstId: 7n }, 'criu-4.1'),
        encodeHeader({ cmd: Command.CLOSE, nrPages: 0n, vaddr: 0n, dstId: 0n }, 'criu-4.1'),
      ]);
      const source = new SyntheticPageSource(new Map([[7, { vaddr: 0x10000n, nrPages: 64 }]]));
      await expect(serveLazyPages(memoryConnection(request).connection, 'criu-4.1', source)).rejects.toBeInstanceOf(PageServerProtocolError);
    });

    it('ADD_F', async () => {
      const target = encodeTarget({ type: 'pid', id: 1 });
      const dump = Buffer.concat([
        encodeHeader({ cmd: Command.OPEN2, nrPages: 0n, vaddr: 0n, dstId: target }, 'criu-4.2'),
        encodeHeader({ cmd: (PageFlag.LAZY << 16) | Command.ADD_F, nrPages: 1n, vaddr: 0x400800n, dstId: target }, 'criu-4.2'),
        encodeHeader({ cmd: Command.CLOSE, nrPages: 0n, vaddr: 0n, dstId: 0n }, 'criu-4.2'),
      ]);
      await expect(receiveDump(memoryConnection(dump).connection, 'criu-4.2', new CountingSink())).rejects.toBeInstanceOf(PageServerProtocolError);
    });
  });

  describe('a page record the cache would write into a pagemap for CRIU must carry page flags CRIU knows', () => {
    // page-stream target, seed 1: {vaddr 0x400000, 2 pages, flags 0x1010101} was taken as it came
    for (const flags of [0x1010101, 0, 8]) {
      it(`a record with flags 0x${flags.toString(16)}`, async () => {
        const record = pageRunRecord({ vaddr: 0x400000n, nr_pages: 2, flags });
        await expect(drain(readPageRecords(Readable.from([record])))).rejects.toBeInstanceOf(PageStreamError);
      });
    }

    it('and its channel must name a pagemap', () => {
      let refusal: unknown;
      try {
        targetOfPageChannel('pagemap-../1');
      } catch (error) {
        refusal = error;
      }
      // the name grammar owns that refusal (src/name-grammars.ts)
      expect(refusal).toBeInstanceOf(BadNameError);
    });
  });

  describe('a pagemap image that is refused is closed', () => {
    const refusedImages = {
      'a wrong magic': Buffer.from('0000000000000000', 'hex'),
      'an entry that is not a pagemap entry': encodeImage(PAGEMAP_HEADER, [Entries.pagemapHead.encode({ pages_id: 1 }), Buffer.from([0xff, 0xff])]),
      'a truncated entry': encodeImage(PAGEMAP_HEADER, [Entries.pagemapHead.encode({ pages_id: 1 })]).subarray(0, 10),
    };
    for (const [what, bytes] of Object.entries(refusedImages)) {
      // pagemap-file target, seed 1: npm run fuzz ended in EMFILE
      it(`with ${what}`, async () => {
        const scratch = scratchDir('fuzz-pagemap');
        try {
          writeFileSync(`${scratch.path}/pagemap-1.img`, bytes);
          const before = readdirSync('/proc/self/fd').length;
          for (let i = 0; i < 50; i++) await expect(readPagemap(scratch.path, { type: 'pid', id: 1 })).rejects.toBeInstanceOf(ImageFormatError);
          await new Promise((resolve) => setImmediate(resolve));
          expect(readdirSync('/proc/self/fd').length - before).toBeLessThan(10);
        } finally {
          scratch.remove();
        }
      });
    }
  });
});
