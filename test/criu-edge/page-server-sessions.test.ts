import { describe, expect, it } from 'vitest';
import { receiveDump } from '../../src/criu/page-server/dump-receiver.js';
import { LazyPagesClient } from '../../src/criu/page-server/lazy-pages-client.js';
import { serveLazyPages } from '../../src/criu/page-server/lazy-pages-server.js';
import { Command, HEADER_SIZE, PAGE_SIZE, PageFlag, PageServerProtocolError, decodeHeader, encodeHeader, parseCommand, type HeaderLayout } from '../../src/criu/page-server/protocol.js';
import { TruncatedStreamError } from '../../src/streams/stream-reader.js';
import { memoryConnection } from '../support/memory-connection.js';
import { MemorySink, SyntheticPageSource, dumpStream, pagesOf } from '../support/page-server-streams.js';

const LAYOUTS: HeaderLayout[] = ['criu-4.1', 'criu-4.2'];
const TASK = { type: 'pid', id: 77 } as const;
const SHMEM = { type: 'shmem', id: 1848 } as const;
const present = PageFlag.PRESENT;

describe('receiving a dump', () => {
  for (const layout of [...LAYOUTS, 'detect'] as const) {
    it(`hands each pagemap's entries and exact page data to the sink, and answers like CRIU (${layout})`, async () => {
      const wire: HeaderLayout = layout === 'detect' ? 'criu-4.2' : layout;
      const stream = dumpStream(wire, [
        { target: TASK, entries: [
          { vaddr: 0x400000n, nrPages: 2, flags: present },
          { vaddr: 0x600000n, nrPages: 3, flags: PageFlag.LAZY },
          { vaddr: 0x7f0000000000n, nrPages: 5, flags: present | PageFlag.LAZY },
        ] },
        { target: SHMEM, entries: [{ vaddr: 0n, nrPages: 1, flags: present }] },
      ]);
      // deliver it in awkward pieces, across header and page boundaries
      const pieces = [];
      for (let at = 0; at < stream.length; at += 1000) pieces.push(stream.subarray(at, at + 1000));
      const { connection, written } = memoryConnection(pieces);
      const sink = new MemorySink();

      const summary = await receiveDump(connection, layout, sink);

      expect(summary).toEqual({ pagemaps: 2, entries: 4, pagesReceived: 8 });
      expect(sink.finished).toBe(true);
      expect(sink.pagemaps.map((p) => p.target)).toEqual([TASK, SHMEM]);
      expect(sink.pagemaps[0]!.entries.map((e) => e.flags)).toEqual([present, PageFlag.LAZY, present | PageFlag.LAZY]);
      expect(Buffer.concat(sink.pagemaps[0]!.pages)).toEqual(Buffer.concat([pagesOf(0x400000n, 2), pagesOf(0x7f0000000000n, 5)]));
      expect(Buffer.concat(sink.pagemaps[1]!.pages)).toEqual(pagesOf(0n, 1));
      // one byte "no parent" per OPEN2, then the int32 status 0 for CLOSE
      expect(written().toString('hex')).toBe('00' + '00' + '00000000');
    });
  }

  it('answers PARENT with a 4-byte "no parent images here"', async () => {
    const layout = 'criu-4.1';
    const parent = encodeHeader({ cmd: Command.PARENT, nrPages: 0n, vaddr: 0n, dstId: 0x4d01n }, layout);
    const { connection, written } = memoryConnection(Buffer.concat([parent, dumpStream(layout, [])]));
    await receiveDump(connection, layout, new MemorySink());
    expect(written().toString('hex')).toBe('00000000' + '00000000');
  });

  it('fails, without telling CRIU the dump succeeded, when the stream ends early', async () => {
    const stream = dumpStream('criu-4.1', [{ target: TASK, entries: [{ vaddr: 0x1000n, nrPages: 4, flags: present }] }]);
    for (const cut of [10, 24 + 24 + 100, stream.length - 24]) {
      const { connection, written } = memoryConnection(stream.subarray(0, cut));
      await expect(receiveDump(connection, 'criu-4.1', new MemorySink())).rejects.toThrow(/ended|without CLOSE/);
      expect(written().length).toBeLessThan(4 + 1 + 1); // never the CLOSE status
    }
  });

  it('rejects a GET in a dump, and data after CLOSE', async () => {
    const get = encodeHeader({ cmd: Command.GET, nrPages: 1n, vaddr: 0x1000n, dstId: 7n }, 'criu-4.1');
    await expect(receiveDump(memoryConnection(get).connection, 'criu-4.1', new MemorySink())).rejects.toThrow(/GET is a lazy-pages request/);
    const extra = Buffer.concat([dumpStream('criu-4.1', []), Buffer.from('junk')]);
    await expect(receiveDump(memoryConnection(extra).connection, 'criu-4.1', new MemorySink())).rejects.toThrow(/data after CLOSE/);
  });

  it('refuses a sink that leaves page data unread, instead of reading pages as headers', async () => {
    const stream = dumpStream('criu-4.1', [{ target: TASK, entries: [{ vaddr: 0x1000n, nrPages: 2, flags: present }] }]);
    const lazySink = Object.assign(new MemorySink(), { addEntry: async () => {} });
    await expect(receiveDump(memoryConnection(stream).connection, 'criu-4.1', lazySink)).rejects.toThrow(/took 0 of 8192 bytes/);
  });
});

describe('serving a lazy restore', () => {
  const get = (layout: HeaderLayout, pid: number, vaddr: bigint, nrPages: number): Buffer =>
    encodeHeader({ cmd: Command.GET, nrPages: BigInt(nrPages), vaddr, dstId: BigInt(pid) }, layout);
  const close = (layout: HeaderLayout): Buffer => encodeHeader({ cmd: Command.CLOSE, nrPages: 0n, vaddr: 0n, dstId: 0n }, layout);

  for (const layout of LAYOUTS) {
    it(`answers pipelined GETs strictly in order, short at the end of a run (${layout})`, async () => {
      const source = new SyntheticPageSource(new Map([[5, { vaddr: 0x10000n, nrPages: 8 }], [6, { vaddr: 0x7000000n, nrPages: 2 }]]));
      const requests = [get(layout, 5, 0x12000n, 1), get(layout, 6, 0x7000000n, 16), get(layout, 5, 0x14000n, 64), close(layout)];
      const { connection, written } = memoryConnection(Buffer.concat(requests));

      expect(await serveLazyPages(connection, layout, source)).toEqual({ requests: 3, pagesSent: 1 + 2 + 4 });

      const answer = written();
      const size = HEADER_SIZE[layout];
      let at = 0;
      const expected = [
        { pid: 5, vaddr: 0x12000n, nrPages: 1 },
        { pid: 6, vaddr: 0x7000000n, nrPages: 2 },
        { pid: 5, vaddr: 0x14000n, nrPages: 4 },
      ];
      for (const { pid, vaddr, nrPages } of expected) {
        const header = decodeHeader(answer.subarray(at, at + size), layout);
        expect(header.cmd).toBe((PageFlag.PRESENT << 16) | Command.ADD_F);
        expect(header.dstId).toBe(BigInt(pid));
        expect(header.vaddr).toBe(vaddr);
        expect(header.nrPages).toBe(BigInt(nrPages));
        at += size;
        expect(answer.subarray(at, at + nrPages * PAGE_SIZE)).toEqual(pagesOf(vaddr, nrPages));
        at += nrPages * PAGE_SIZE;
      }
      expect(answer.subarray(at).toString('hex')).toBe('00000000');
    });
  }

  it('ends the session when asked for a page it does not have, or for something other than GET', async () => {
    const source = new SyntheticPageSource(new Map([[5, { vaddr: 0x10000n, nrPages: 1 }]]));
    await expect(serveLazyPages(memoryConnection(get('criu-4.1', 5, 0x90000n, 1)).connection, 'criu-4.1', source)).rejects.toThrow(/no page of 5/);
    const add = dumpStream('criu-4.1', [{ target: TASK, entries: [] }]);
    await expect(serveLazyPages(memoryConnection(add).connection, 'criu-4.1', source)).rejects.toThrow(PageServerProtocolError);
  });

  it('rejects a truncated request with a clear error', async () => {
    const partial = get('criu-4.2', 5, 0x10000n, 1).subarray(0, 20);
    await expect(serveLazyPages(memoryConnection(partial).connection, 'criu-4.2', new SyntheticPageSource(new Map()))).rejects.toThrow(TruncatedStreamError);
    expect(() => parseCommand(decodeHeader(Buffer.alloc(24), 'criu-4.1'))).toThrow(/unknown page-server command 0x0/);
  });
});

describe('asking a lazy page server for pages', () => {
  const answer = (layout: HeaderLayout, pid: number, vaddr: bigint, nrPages: number): Buffer =>
    Buffer.concat([encodeHeader({ cmd: (PageFlag.PRESENT << 16) | Command.ADD_F, nrPages: BigInt(nrPages), vaddr, dstId: BigInt(pid) }, layout), pagesOf(vaddr, nrPages)]);

  for (const layout of LAYOUTS) {
    it(`matches pipelined answers to GETs by order, accepts short ones, and closes with status 0 (${layout})`, async () => {
      const { connection, written } = memoryConnection([answer(layout, 5, 0x10000n, 2), answer(layout, 5, 0x20000n, 1), Buffer.alloc(4)]);
      const client = new LazyPagesClient(connection, layout);
      const first = client.get(5, 0x10000n, 2);
      const second = client.get(5, 0x20000n, 8);
      const a = await first;
      const chunks: Buffer[] = [];
      for await (const chunk of a.pages) chunks.push(chunk);
      expect(Buffer.concat(chunks)).toEqual(pagesOf(0x10000n, 2));
      const b = await second;
      expect(b.nrPages).toBe(1);
      for await (const chunk of b.pages) expect(chunk).toEqual(pagesOf(0x20000n, 1));
      await client.close();
      const requests = written();
      const size = HEADER_SIZE[layout];
      expect(parseCommand(decodeHeader(requests.subarray(0, size), layout))).toEqual({ kind: 'get', pid: 5, vaddr: 0x10000n, nrPages: 2 });
      expect(parseCommand(decodeHeader(requests.subarray(size, 2 * size), layout))).toEqual({ kind: 'get', pid: 5, vaddr: 0x20000n, nrPages: 8 });
      expect(parseCommand(decodeHeader(requests.subarray(2 * size), layout))).toEqual({ kind: 'close', force: false });
    });
  }

  it('refuses an answer that is not for the request it answers, or longer than asked', async () => {
    const wrongPlace = new LazyPagesClient(memoryConnection(answer('criu-4.1', 5, 0x30000n, 1)).connection, 'criu-4.1');
    await expect(wrongPlace.get(5, 0x10000n, 1)).rejects.toThrow(/does not match GET 5\/0x10000/);
    const tooLong = new LazyPagesClient(memoryConnection(answer('criu-4.1', 5, 0x10000n, 4)).connection, 'criu-4.1');
    await expect(tooLong.get(5, 0x10000n, 2)).rejects.toThrow(/answer of 4 pages to a GET of 2/);
  });
});
