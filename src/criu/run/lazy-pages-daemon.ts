import { serveLazyPages, type LazySummary, type PageSource } from '../page-server/lazy-pages-server.js';
import type { HeaderLayout } from '../page-server/protocol.js';
import { startCriu, type CriuProcess } from './criu-process.js';

export interface LazyPagesDaemon {
  readonly criu: CriuProcess;
  /** Settles when the daemon's page-server session ends: every page it asked for was served, or it failed. */
  readonly served: Promise<LazySummary>;
}

/**
 * `criu lazy-pages` for a lazy restore of the images in `dir`, its pages served from `source`.
 * Its page-server session runs over a socket pair (no port another process could reach first),
 * and its unix socket for `criu restore --lazy-pages` lives in `dir`: the restore must use the same
 * -D and run with its cwd there too (criu#2808 when the two disagree). Resolve `criu.ready` before
 * starting the restore.
 */
export function startLazyPagesDaemon(dir: string, source: PageSource, options: { readonly layout: HeaderLayout; readonly logFile: string; readonly binary?: string }): LazyPagesDaemon {
  const criu = startCriu('lazy-pages', ['-D', dir], { logFile: options.logFile, statusFd: true, cwd: dir, pageServerSocket: true, ...(options.binary ? { binary: options.binary } : {}) });
  const served = criu.pageServer ? serveLazyPages(criu.pageServer, options.layout, source) : Promise.reject(new Error('criu lazy-pages was started without a page-server socket (did it start at all?)'));
  served.catch(() => {});
  return { criu, served };
}
