import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { getDefaultHighWaterMark, setDefaultHighWaterMark, type Readable } from 'node:stream';

/** The CRIU haul runs where none is named (--criu): HAUL_CRIU from the environment, else scripts/setup-host's. */
export const DEFAULT_CRIU = process.env['HAUL_CRIU'] || '/usr/local/sbin/criu';

/** CRIU failed; the message quotes the `Error (file:line): …` lines of its log. */
export class CriuError extends Error {
  override readonly name = 'CriuError';
  constructor(
    readonly action: string,
    readonly exit: number | string,
    readonly errors: readonly string[],
    readonly logFile: string,
  ) {
    super(`criu ${action} failed (${exit}); ${logFile} says:\n${errors.length ? errors.join('\n') : '(no Error lines)'}`);
  }
}

/**
 * The `Error (file:line): …` lines of a CRIU log. Every run on a host whose root lacks
 * CAP_SYS_RESOURCE logs a harmless RLIMIT_NOFILE error, which is left out.
 */
export async function criuLogErrors(logFile: string): Promise<string[]> {
  let log: string;
  try {
    log = await readFile(logFile, 'utf8');
  } catch {
    return [];
  }
  return log.split('\n').filter((line) => /Error \(/.test(line) && !/RLIMIT_NOFILE/.test(line));
}

export interface CriuOptions {
  /** Where CRIU writes its log (-o); kept after the run. */
  readonly logFile: string;
  readonly binary?: string;
  /** -v level; 4 (debug) by default, since a failed migration is diagnosed from this log. */
  readonly verbosity?: 0 | 1 | 2 | 3 | 4;
  /** Pass --status-fd and resolve `ready` when CRIU reports it is serving (page-server, lazy-pages, lazy dump, restore). */
  readonly statusFd?: boolean;
  readonly cwd?: string;
  /**
   * Hand CRIU one end of a socket pair as its page-server connection (`--page-server --ps-socket`)
   * and keep the other as `pageServer`. No socket listens, so no other process can reach CRIU's
   * page-server session or pose as it. Works for `dump` (without --lazy-pages: CRIU 4.1.1 closes
   * the socket at the end of a lazy dump, then serves lazy pages on the closed descriptor) and for
   * `lazy-pages` (criu/page-xfer.c connect_to_page_server takes opts.ps_socket for both).
   */
  readonly pageServerSocket?: boolean;
}

export interface CriuProcess {
  readonly child: ChildProcess;
  /** Resolves when CRIU says it is ready on --status-fd; rejects if it exits first. */
  readonly ready: Promise<void>;
  /** Resolves when CRIU exits 0; rejects with a CriuError otherwise. */
  readonly exited: Promise<void>;
  /** haul's end of CRIU's page-server connection, with `pageServerSocket`. */
  readonly pageServer?: Socket;
}

/** CRIU's end of the page-server socket pair, in the child. */
const PAGE_SERVER_FD = 4;
/**
 * A deep read buffer on haul's end lets Node drain CRIU's bursts in one turn of the event loop
 * instead of one 16 KiB buffer per turn, which held a dump to a third of CRIU's own page-server rate.
 */
const PAGE_SERVER_READ_BUFFER = 4 * 1024 * 1024;

export function startCriu(action: string, args: readonly string[], options: CriuOptions): CriuProcess {
  const statusArgs = options.statusFd ? ['--status-fd', '3'] : [];
  const pageServerArgs = options.pageServerSocket ? ['--page-server', '--ps-socket', String(PAGE_SERVER_FD)] : [];
  // libuv makes each 'pipe' a socketpair whose child end stays blocking, as CRIU expects of its
  // page-server socket (src/unix/process.c); the stream on haul's end takes the default
  // high-water mark of the moment it is made
  const defaultHighWaterMark = getDefaultHighWaterMark(false);
  if (options.pageServerSocket && action === 'dump') setDefaultHighWaterMark(false, PAGE_SERVER_READ_BUFFER);
  let child: ChildProcess;
  try {
    child = spawn(
      options.binary ?? DEFAULT_CRIU,
      [action, ...args, ...pageServerArgs, '-o', options.logFile, `-v${options.verbosity ?? 4}`, ...statusArgs],
      { stdio: ['ignore', 'ignore', 'pipe', 'pipe', options.pageServerSocket ? 'pipe' : 'ignore'], cwd: options.cwd },
    );
  } finally {
    setDefaultHighWaterMark(false, defaultHighWaterMark);
  }
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => void (stderr = (stderr + chunk.toString()).slice(-4096)));
  const exited = new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (code === 0) return resolve();
      void criuLogErrors(options.logFile).then((errors) =>
        reject(new CriuError(action, code ?? signal ?? 'unknown', errors.length ? errors : stderr.trim().split('\n'), options.logFile)),
      );
    });
  });
  const status = child.stdio[3] as Readable | null;
  const ready = new Promise<void>((resolve, reject) => {
    if (!options.statusFd || !status) return resolve();
    status.once('data', () => resolve());
    exited.then(() => reject(new Error(`criu ${action} exited before it was ready`)), reject);
  });
  ready.catch(() => {});
  exited.catch(() => {});
  const pageServer = options.pageServerSocket ? (child.stdio[PAGE_SERVER_FD] as Socket) : undefined;
  // errors reach whoever reads the session; this keeps one with no reader yet from crashing haul
  pageServer?.on('error', () => {});
  return pageServer ? { child, ready, exited, pageServer } : { child, ready, exited };
}

export async function runCriu(action: string, args: readonly string[], options: CriuOptions): Promise<void> {
  await startCriu(action, args, options).exited;
}
