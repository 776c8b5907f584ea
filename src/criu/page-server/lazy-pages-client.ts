import type { Duplex } from 'node:stream';
import { writeTo } from './connection.js';
import {
  Command,
  HEADER_SIZE,
  PAGE_SIZE,
  PageFlag,
  PageServerProtocolError,
  decodeHeader,
  encodeHeader,
  type HeaderLayout,
} from './protocol.js';
import { StreamReader } from '../../streams/stream-reader.js';

export interface PagesAnswer {
  readonly nrPages: number;
  /** Exactly nrPages pages; must be read to the end before the next answer can be. */
  readonly pages: AsyncIterable<Buffer>;
}

/**
 * The client side of a lazy migration's page server (what criu/uffd.c is to `criu dump
 * --lazy-pages`): asks for pages with GET and reads the ADD_F|PRESENT answers. Requests may be
 * pipelined; the server answers in order, so answers are matched to requests by order and checked
 * against them.
 */
export class LazyPagesClient {
  private readonly reader: StreamReader;
  private previous: Promise<void> = Promise.resolve();

  constructor(
    private readonly socket: Duplex,
    private readonly layout: HeaderLayout,
  ) {
    this.reader = new StreamReader(socket);
  }

  /** Sends a GET now; resolves with its answer once every earlier answer has been read. */
  async get(pid: number, vaddr: bigint, nrPages: number): Promise<PagesAnswer> {
    await writeTo(this.socket, encodeHeader({ cmd: Command.GET, nrPages: BigInt(nrPages), vaddr, dstId: BigInt(pid) }, this.layout));
    const turn = this.previous;
    let done!: () => void;
    this.previous = new Promise<void>((resolve) => (done = resolve));
    await turn;
    const bytes = await this.reader.readExactly(HEADER_SIZE[this.layout], 'GET answer');
    if (bytes === null) throw new PageServerProtocolError(`the page server closed instead of answering GET ${pid}/0x${vaddr.toString(16)}`);
    const answer = decodeHeader(bytes, this.layout);
    if (answer.cmd !== ((PageFlag.PRESENT << 16) | Command.ADD_F) || answer.dstId !== BigInt(pid) || answer.vaddr !== vaddr) {
      throw new PageServerProtocolError(
        `answer 0x${answer.cmd.toString(16)} for ${answer.dstId}/0x${answer.vaddr.toString(16)} does not match GET ${pid}/0x${vaddr.toString(16)}`,
      );
    }
    if (answer.nrPages < 1n || answer.nrPages > BigInt(nrPages)) {
      throw new PageServerProtocolError(`answer of ${answer.nrPages} pages to a GET of ${nrPages}`);
    }
    const count = Number(answer.nrPages);
    const reader = this.reader;
    async function* pages(): AsyncGenerator<Buffer, void, undefined> {
      try {
        yield* reader.readChunks(count * PAGE_SIZE, 'answered pages');
      } finally {
        done();
      }
    }
    return { nrPages: count, pages: pages() };
  }

  /** Ends the session: CLOSE, then the server's int32 status, which must be 0. */
  async close(): Promise<void> {
    await this.previous;
    await writeTo(this.socket, encodeHeader({ cmd: Command.CLOSE, nrPages: 0n, vaddr: 0n, dstId: 0n }, this.layout));
    const status = await this.reader.readExactly(4, 'CLOSE status');
    if (status === null) throw new PageServerProtocolError('the page server closed without answering CLOSE');
    if (status.readInt32LE(0) !== 0) throw new PageServerProtocolError(`the page server answered CLOSE with status ${status.readInt32LE(0)}`);
    this.socket.end();
  }
}
