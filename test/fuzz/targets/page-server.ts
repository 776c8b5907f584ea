import { receiveDump } from '../../../src/criu/page-server/dump-receiver.js';
import { LazyPagesClient } from '../../../src/criu/page-server/lazy-pages-client.js';
import { serveLazyPages, type PageSource } from '../../../src/criu/page-server/lazy-pages-server.js';
import {
  Command,
  HEADER_SIZE,
  MAX_PAGES_PER_COMMAND,
  PAGE_SIZE,
  PageFlag,
  PageServerProtocolError,
  decodeHeader,
  detectHeaderLayout,
  encodeHeader,
  encodeTarget,
  int32Reply,
  pagesAnswerHeader,
  parseCommand,
  type HeaderLayout,
} from '../../../src/criu/page-server/protocol.js';
import { TruncatedStreamError } from '../../../src/streams/stream-reader.js';
import { memoryConnection } from '../../support/memory-connection.js';
import { CountingSink, SyntheticPageSource, dumpStream, pagesOf } from '../../support/page-server-streams.js';
import { InvariantBroken, type FuzzTarget } from '../fuzzer.js';
import { chunked } from '../mutations.js';

const LAYOUTS: readonly HeaderLayout[] = ['criu-4.1', 'criu-4.2'];

export const pageServerHeader: FuzzTarget = {
  name: 'page-server-header',
  decoder: 'src/criu/page-server/protocol.ts detectHeaderLayout, decodeHeader, parseCommand',
  expected: [PageServerProtocolError],
  seeds: () =>
    LAYOUTS.flatMap((layout) => [
      encodeHeader({ cmd: Command.OPEN2, nrPages: 0n, vaddr: 0n, dstId: encodeTarget({ type: 'pid', id: 4242 }) }, layout),
      encodeHeader({ cmd: Command.PARENT, nrPages: 0n, vaddr: 0n, dstId: encodeTarget({ type: 'shmem', id: 7 }) }, layout),
      encodeHeader({ cmd: (PageFlag.PRESENT << 16) | Command.ADD_F, nrPages: 16n, vaddr: 0x7f0000000000n, dstId: encodeTarget({ type: 'pid', id: 1 }) }, layout),
      encodeHeader({ cmd: Command.HOLE, nrPages: 2n, vaddr: 0x400000n, dstId: encodeTarget({ type: 'pid', id: 1 }) }, layout),
      encodeHeader({ cmd: Command.GET, nrPages: 1024n, vaddr: 0x10000n, dstId: 77n }, layout),
      encodeHeader({ cmd: Command.CLOSE, nrPages: 0n, vaddr: 0n, dstId: 0n }, layout),
    ]),
  run(input, random) {
    const layout = input.length >= 24 && random.chance(0.5) ? detectHeaderLayout(input) : random.pick(LAYOUTS);
    const command = parseCommand(decodeHeader(input.subarray(0, HEADER_SIZE[layout]), layout));
    if ((command.kind === 'add' || command.kind === 'get') && (!Number.isSafeInteger(command.nrPages) || command.nrPages > MAX_PAGES_PER_COMMAND)) {
      throw new InvariantBroken(`a command of ${command.nrPages} pages`);
    }
    if (command.kind === 'get' && (command.pid < 1 || command.pid > 0x7fffffff)) throw new InvariantBroken(`GET for pid ${command.pid}`);
    return command;
  },
};

export const dumpReceiver: FuzzTarget = {
  name: 'dump-receiver',
  decoder: 'src/criu/page-server/dump-receiver.ts receiveDump (a criu dump --page-server connection)',
  expected: [PageServerProtocolError, TruncatedStreamError],
  seeds: () =>
    LAYOUTS.flatMap((layout) => [
      dumpStream(layout, [
        { target: { type: 'pid', id: 42 }, entries: [
          { vaddr: 0x400000n, nrPages: 2, flags: PageFlag.PRESENT },
          { vaddr: 0x800000n, nrPages: 3, flags: PageFlag.LAZY },
          { vaddr: 0x900000n, nrPages: 1, flags: PageFlag.PARENT },
        ] },
        { target: { type: 'shmem', id: 9 }, entries: [{ vaddr: 0n, nrPages: 1, flags: PageFlag.PRESENT | PageFlag.LAZY }] },
      ]),
      dumpStream(layout, []),
    ]),
  async run(input, random) {
    const sink = new CountingSink();
    const layout = random.chance(0.3) ? 'detect' : random.pick(LAYOUTS);
    const summary = await receiveDump(memoryConnection(chunked(input, random)).connection, layout, sink).finally(() => {
      // the sink never holds more than the input carried, accepted or not
      if (sink.bytes > input.length) throw new InvariantBroken(`the sink got ${sink.bytes} bytes of pages from ${input.length} bytes`);
    });
    if (summary.pagesReceived * PAGE_SIZE !== sink.bytes) throw new InvariantBroken(`${summary.pagesReceived} pages reported, ${sink.bytes} bytes given`);
    return summary;
  },
};

/** A page source that refuses with an error of its own, as the proxy's does, so its refusals are told apart from crashes. */
class NoSuchPage extends Error {
  override readonly name = 'NoSuchPage';
}
const pages = new SyntheticPageSource(new Map([[7, { vaddr: 0x10000n, nrPages: 64 }]]));
const strictSource: PageSource = {
  read: (pid, vaddr, nrPages) => pages.read(pid, vaddr, nrPages).catch((error: Error) => Promise.reject(new NoSuchPage(error.message))),
};

export const lazyPagesServer: FuzzTarget = {
  name: 'lazy-pages-server',
  decoder: 'src/criu/page-server/lazy-pages-server.ts serveLazyPages (GET requests from criu lazy-pages)',
  expected: [PageServerProtocolError, TruncatedStreamError, NoSuchPage],
  seeds: () =>
    LAYOUTS.map((layout) =>
      Buffer.concat([
        encodeHeader({ cmd: Command.GET, nrPages: 1n, vaddr: 0x10000n, dstId: 7n }, layout),
        encodeHeader({ cmd: Command.GET, nrPages: 16n, vaddr: 0x20000n, dstId: 7n }, layout),
        encodeHeader({ cmd: Command.GET, nrPages: 1024n, vaddr: 0x4c000n, dstId: 7n }, layout),
        encodeHeader({ cmd: Command.CLOSE, nrPages: 0n, vaddr: 0n, dstId: 0n }, layout),
      ]),
    ),
  async run(input, random) {
    const { connection, written } = memoryConnection(chunked(input, random));
    const layout = random.chance(0.3) ? 'detect' : random.pick(LAYOUTS);
    const summary = await serveLazyPages(connection, layout, strictSource);
    // what it sends is what was asked for: at most 64 pages exist, each request has a header
    if (written().length > summary.requests * 32 + 64 * PAGE_SIZE * summary.requests + 4) throw new InvariantBroken(`${written().length} bytes sent for ${summary.requests} requests`);
    return summary;
  },
};

/** The requests the lazy-pages client fuzz target makes, in order; the seeds answer them. */
const REQUESTS = [
  { pid: 7, vaddr: 0x10000n, nrPages: 1 },
  { pid: 7, vaddr: 0x20000n, nrPages: 16 },
  { pid: 9, vaddr: 0x7f0000000000n, nrPages: 4 },
] as const;

export const lazyPagesClient: FuzzTarget = {
  name: 'lazy-pages-client',
  decoder: 'src/criu/page-server/lazy-pages-client.ts LazyPagesClient (answers from a page server)',
  expected: [PageServerProtocolError, TruncatedStreamError],
  seeds: () =>
    LAYOUTS.flatMap((layout) => [
      Buffer.concat([
        ...REQUESTS.flatMap(({ pid, vaddr, nrPages }) => {
          const answered = Math.max(1, nrPages >> 1);
          return [encodeHeader(pagesAnswerHeader(pid, vaddr, answered), layout), pagesOf(vaddr, answered)];
        }),
        int32Reply(0),
      ]),
    ]),
  async run(input, random) {
    const layout = random.pick(LAYOUTS);
    const client = new LazyPagesClient(memoryConnection(chunked(input, random)).connection, layout);
    let received = 0;
    for (const { pid, vaddr, nrPages } of REQUESTS) {
      const answer = await client.get(pid, vaddr, nrPages);
      if (answer.nrPages < 1 || answer.nrPages > nrPages) throw new InvariantBroken(`an answer of ${answer.nrPages} pages to a GET of ${nrPages}`);
      let bytes = 0;
      for await (const chunk of answer.pages) bytes += chunk.length;
      if (bytes !== answer.nrPages * PAGE_SIZE) throw new InvariantBroken(`${bytes} bytes for ${answer.nrPages} pages`);
      received += bytes;
    }
    await client.close();
    if (received > input.length) throw new InvariantBroken(`${received} bytes of pages from ${input.length} bytes`);
    return received;
  },
};
