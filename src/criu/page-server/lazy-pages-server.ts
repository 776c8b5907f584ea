import type { Duplex } from 'node:stream';
import { writeTo } from './connection.js';
import { PAGE_SIZE, PageServerProtocolError, decodeHeader, encodeHeader, int32Reply, pagesAnswerHeader, parseCommand, type HeaderLayout } from './protocol.js';
import { HeaderReader } from './header-reader.js';
import { StreamReader } from '../../streams/stream-reader.js';

/** Where the pages a lazy restore asks for come from. */
export interface PageSource {
  /**
   * Up to nrPages pages of task `pid` from vaddr on: at least one, and fewer where the run they start
   * in ends sooner (CRIU's own server answers short there too). Throws if it has no page at vaddr.
   */
  read(pid: number, vaddr: bigint, nrPages: number): Promise<{ nrPages: number; pages: AsyncIterable<Buffer> }>;
}

export interface LazySummary {
  readonly requests: number;
  readonly pagesSent: number;
}

/**
 * Plays the source's page server for `criu lazy-pages --page-server` (criu/uffd.c is the client):
 * answers each GET with an ADD_F|PRESENT header echoing its vaddr and pid, then the pages. The client
 * matches answers to requests by order alone, so requests are answered strictly one after another,
 * each in full before the next is read.
 */
export async function serveLazyPages(socket: Duplex, layout: HeaderLayout | 'detect', source: PageSource): Promise<LazySummary> {
  const reader = new StreamReader(socket);
  const headers = new HeaderReader(reader, layout);
  let requests = 0;
  let pagesSent = 0;
  try {
    for (;;) {
      const header = await headers.next();
      if (header === null) throw new PageServerProtocolError('criu lazy-pages closed the connection without CLOSE');
      const command = parseCommand(decodeHeader(header.bytes, header.layout));
      if (command.kind === 'close') {
        await writeTo(socket, int32Reply(0));
        await reader.atEnd();
        socket.end();
        return { requests, pagesSent };
      }
      if (command.kind !== 'get') throw new PageServerProtocolError(`a lazy-pages client sent ${command.kind}, not GET or CLOSE`);
      const answer = await source.read(command.pid, command.vaddr, command.nrPages);
      if (answer.nrPages < 1 || answer.nrPages > command.nrPages) {
        throw new Error(`page source answered ${answer.nrPages} pages to a GET of ${command.nrPages}`);
      }
      await writeTo(socket, encodeHeader(pagesAnswerHeader(command.pid, command.vaddr, answer.nrPages), header.layout));
      let sent = 0;
      for await (const chunk of answer.pages) {
        sent += chunk.length;
        await writeTo(socket, chunk);
      }
      if (sent !== answer.nrPages * PAGE_SIZE) throw new Error(`page source gave ${sent} bytes for ${answer.nrPages} pages`);
      requests++;
      pagesSent += answer.nrPages;
    }
  } catch (error) {
    socket.destroy();
    throw error;
  }
}
