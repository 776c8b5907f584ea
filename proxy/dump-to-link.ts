import type { Socket } from 'node:net';
import { acceptOne, acceptOneLocal, receiveDump, type DumpSummary, type HeaderLayout } from '../src/criu/index.js';
import { expectPeerProcess, type ProcessIdentity } from '../src/host/index.js';
import type { LinkSession } from '../src/link/index.js';
import { LinkPagemapSink } from './pages-to-link.js';

/**
 * haul's page server for one pre-copy `criu dump --page-server`, on loopback TCP or on a unix socket: every pagemap and page CRIU sends goes straight onto the link.
 * `received` settles when CRIU has closed its page-server session (all pages are on the link) or
 * the session failed.
 *
 * Where CRIU can take it, the unix socket (`--ps-socket`) is the better one: CRIU corks its TCP
 * connection to the page server (criu/page-xfer.c connect_to_page_server) and flushes it only when
 * it waits for an answer, so the last pagemap's entries and the CLOSE sit in the cork until the
 * kernel's 200 ms timer sends them, inside the container's freeze. A unix socket has no cork.
 * CRIU 4.1.1 cannot use --ps-socket with --lazy-pages: it closes the socket at the end of the dump
 * and then serves lazy pages on the same, closed, descriptor; so lazy dumps bypass haul's page
 * server altogether (lazy-dump.ts).
 */
export interface DumpToLink {
  readonly pages: LinkPagemapSink;
  readonly received: Promise<DumpSummary>;
  /**
   * Never resolves; rejects when pages can no longer flow (CRIU's session or the link failed), so a
   * wait for CRIU's next step can stop then instead of hanging.
   */
  readonly failed: Promise<never>;
  /** Drops CRIU's connection (the dump then fails, and CRIU resumes the source) and stops listening. */
  abandon(): void;
}

/**
 * CRIU connects to a free port on 127.0.0.1 (--page-server --address 127.0.0.1 --port). Any local user
 * can connect there too: only a connection held by the process `criu` names (once CRIU runs; its pid
 * and start time) is served; others are dropped unread and reported to `onRefused`.
 */
export async function dumpToLink(session: LinkSession, layout: HeaderLayout, criu: Promise<ProcessIdentity>, options: { readonly onRefused?: (error: unknown) => void } = {}): Promise<DumpToLink & { readonly port: number }> {
  criu.catch(() => {}); // a pid never known refuses every connection, below
  const server = await acceptOne('127.0.0.1', 0, async (socket) => expectPeerProcess(socket, await criu), options.onRefused);
  return { ...forwardDump(session, layout, server), port: server.port };
}

/** CRIU holds the other end of `socket` already (startCriu's pageServerSocket). */
export function dumpToLinkOver(session: LinkSession, layout: HeaderLayout, socket: Socket | undefined): DumpToLink {
  const connection = socket ? Promise.resolve(socket) : Promise.reject(new Error('criu was started without a page-server socket (did it start at all?)'));
  return forwardDump(session, layout, { connection, close: () => {} });
}

/** CRIU is handed a socket connected to `path` (--page-server --ps-socket FD), in a directory only root may enter. */
export async function dumpToLinkLocal(session: LinkSession, layout: HeaderLayout, path: string): Promise<DumpToLink & { readonly path: string }> {
  const server = await acceptOneLocal(path);
  return { ...forwardDump(session, layout, server), path };
}

function forwardDump(session: LinkSession, layout: HeaderLayout, server: { readonly connection: Promise<Socket>; close(): void }): DumpToLink {
  const pages = new LinkPagemapSink(session);
  let criuSocket: Socket | undefined;
  const received = server.connection.then((socket) => receiveDump((criuSocket = socket), layout, pages));
  received.catch(() => {});
  const failed = new Promise<never>((_, reject) => {
    received.catch(reject);
    session.once('aborted', reject);
  });
  failed.catch(() => {});
  return {
    pages,
    received,
    failed,
    abandon() {
      criuSocket?.destroy();
      server.close();
    },
  };
}
