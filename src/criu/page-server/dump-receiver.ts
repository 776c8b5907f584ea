import type { Duplex } from 'node:stream';
import type { PagemapEntry } from '../images/pagemap.js';
import { writeTo } from './connection.js';
import { PAGE_SIZE, PageFlag, PageServerProtocolError, decodeHeader, int32Reply, parseCommand, type HeaderLayout, type PagemapTarget } from './protocol.js';
import { HeaderReader } from './header-reader.js';
import { StreamReader } from '../../streams/stream-reader.js';

/**
 * Where the pages of a `criu dump --page-server` go. Calls come in the order CRIU sends: a pagemap
 * is begun, its entries added in address order, then ended; `finish` comes once CRIU closes, and
 * CRIU is told the dump succeeded only after it resolves.
 */
export interface PagemapSink {
  beginPagemap(target: PagemapTarget): Promise<void>;
  /** `pages` (PRESENT entries only) yields exactly nrPages pages and must be consumed before returning. */
  addEntry(entry: PagemapEntry, pages: AsyncIterable<Buffer> | undefined): Promise<void>;
  endPagemap(): Promise<void>;
  finish(): Promise<void>;
}

export interface DumpSummary {
  readonly pagemaps: number;
  readonly entries: number;
  readonly pagesReceived: number;
}

/**
 * Plays CRIU's page server (criu/page-xfer.c page_server_serve) for one `criu dump --page-server`
 * connection: decodes each command, hands pagemaps, entries and page data to the sink, answers
 * OPEN2, PARENT and CLOSE. Any protocol or sink error ends the connection without the CLOSE answer,
 * so the dump fails and CRIU resumes the source instead of killing it.
 */
export async function receiveDump(socket: Duplex, layout: HeaderLayout | 'detect', sink: PagemapSink): Promise<DumpSummary> {
  const reader = new StreamReader(socket);
  const headers = new HeaderReader(reader, layout);
  let open: PagemapTarget | undefined;
  let pagemaps = 0;
  let entries = 0;
  let pagesReceived = 0;
  const begin = async (target: PagemapTarget): Promise<void> => {
    if (open) await sink.endPagemap();
    await sink.beginPagemap(target);
    open = target;
    pagemaps++;
  };
  try {
    for (;;) {
      const header = await headers.next();
      if (header === null) throw new PageServerProtocolError('criu dump closed the connection without CLOSE: the pages were not all sent');
      const command = parseCommand(decodeHeader(header.bytes, header.layout));
      switch (command.kind) {
        case 'open':
          await begin(command.target);
          if (command.wantsReply) await writeTo(socket, Buffer.from([0])); // no parent images here
          break;
        case 'parent':
          await writeTo(socket, int32Reply(0));
          break;
        case 'add': {
          // CRIU accepts pages for another pagemap without OPEN ("Deprecated IO w/o open") by opening it
          if (!open || open.type !== command.target.type || open.id !== command.target.id) await begin(command.target);
          const present = (command.flags & PageFlag.PRESENT) !== 0;
          const size = present ? command.nrPages * PAGE_SIZE : 0;
          let consumed = 0;
          async function* pages(): AsyncGenerator<Buffer, void, undefined> {
            for await (const chunk of reader.readChunks(size, 'page data')) {
              consumed += chunk.length;
              yield chunk;
            }
          }
          await sink.addEntry({ vaddr: command.vaddr, nrPages: command.nrPages, flags: command.flags }, present ? pages() : undefined);
          // a sink that stopped early would leave page bytes to be read as the next header
          if (consumed !== size) throw new Error(`the pagemap sink took ${consumed} of ${size} bytes of page data`);
          entries++;
          if (present) pagesReceived += command.nrPages;
          break;
        }
        case 'close':
          if (open) await sink.endPagemap();
          await sink.finish();
          await writeTo(socket, int32Reply(0));
          // CRIU closes first, so that it, not the server, holds the TIME_WAIT
          if (!(await reader.atEnd())) throw new PageServerProtocolError('data after CLOSE');
          socket.end();
          return { pagemaps, entries, pagesReceived };
        case 'get':
          throw new PageServerProtocolError('GET is a lazy-pages request; a dump does not send it');
      }
    }
  } catch (error) {
    socket.destroy();
    throw error;
  }
}
