import type { Socket } from 'node:net';
import { acceptOne } from '../src/criu/page-server/connection.js';
import { receiveDump, type DumpSummary } from '../src/criu/page-server/dump-receiver.js';
import type { HeaderLayout } from '../src/criu/page-server/protocol.js';
import type { LinkSession } from '../src/link/session.js';
import { LinkPagemapSink } from './pages-to-link.js';

/**
 * haul's page server for one `criu dump --page-server` (with or without --lazy-pages) on
 * loopback: every pagemap and page CRIU sends goes straight onto the link. `received` settles when
 * CRIU has closed its page-server session (all pages are on the link) or the session failed.
 */
export interface DumpToLink {
  /** The port to give CRIU (--page-server --address 127.0.0.1 --port). */
  readonly port: number;
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

export async function dumpToLink(session: LinkSession, layout: HeaderLayout): Promise<DumpToLink> {
  const server = await acceptOne('127.0.0.1', 0);
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
    port: server.port,
    pages,
    received,
    failed,
    abandon() {
      criuSocket?.destroy();
      server.close();
    },
  };
}
