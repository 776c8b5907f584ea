import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LazyPagesClient, PAGE_SIZE, startCriu, criuVersion, headerLayoutFor, ActionScript } from '../src/criu/index.js';
import { sendControl, ControlInbox, dialLink, type EndpointOptions, ChannelKind } from '../src/link/index.js';
import { expectPeerProcess, guardNewLoopbackPort, identify, type LoopbackGuard, type ProcessIdentity } from '../src/host/index.js';
import { sendImageFiles } from './images-to-link.js';
import { FaultQueue, moveLazyPages } from './lazy-source.js';
import { dumpToLink, dumpToLinkOver } from './dump-to-link.js';

export interface MigrateOptions extends EndpointOptions {
  readonly pid: number;
  /** ws://HOST:PORT (insecure, loopback only) or wss://HOST:PORT */
  readonly to: string;
  readonly criuBinary?: string;
  /** Where the dump's small images and CRIU's log go on the source (never the pages). */
  readonly workDir?: string;
  readonly onProgress?: (stage: string) => void;
}

/**
 * The source ended its copy on the destination's report of a restore, and then the link failed
 * before the destination confirmed it let its copy run: the destination keeps that copy stopped.
 */
export class MigrationInDoubtError extends Error {
  override readonly name = 'MigrationInDoubtError';
  constructor(mode: 'pre-copy' | 'lazy', sourcePid: number, destinationPid: number, cause: unknown) {
    super(
      `${mode} migration of ${sourcePid}: the source copy has ended, but the link failed before the destination confirmed it runs its copy (pid ${destinationPid} there, kept stopped until confirmed): check it on the destination and run it with kill -CONT; ${cause instanceof Error ? cause.message : String(cause)}`,
      { cause },
    );
  }
}

export interface MigrationSummary {
  readonly mode: 'pre-copy' | 'lazy';
  readonly pages: number;
  readonly imageBytes: number;
  readonly dumpMs: number;
  readonly transferMs: number;
  readonly restoreMs: number;
  /**
   * From the start of the dump (CRIU freezes the tree first) until the copy on the destination
   * runs: after the commit in pre-copy, at the restore in lazy mode.
   */
  readonly downtimeMs: number;
  /** Page bytes plus image-file bytes carried over the link. */
  readonly bytes: number;
  readonly restoredPid: number;
}

/**
 * Reports a page count now and then while pages move: how many, how much, how fast. Returns the
 * function that stops it.
 */
function reportPages(progress: (line: string) => void, what: string, count: () => number): () => void {
  const started = Date.now();
  const timer = setInterval(() => {
    const pages = count();
    const mib = (pages * PAGE_SIZE) / (1024 * 1024);
    const seconds = (Date.now() - started) / 1000;
    progress(`${what}: ${pages} pages, ${mib.toFixed(1)} MiB, ${(mib / Math.max(seconds, 0.001)).toFixed(1)} MiB/s`);
  }, PROGRESS_INTERVAL_MS);
  timer.unref();
  return () => clearInterval(timer);
}

const PROGRESS_INTERVAL_MS = 500;

/** Everything both modes set up before CRIU runs. */
async function startMigration(options: MigrateOptions, mode: 'pre-copy' | 'lazy') {
  const version = await criuVersion(options.criuBinary);
  const ownWorkDir = !options.workDir;
  const workDir = options.workDir ?? (await mkdtemp(join(tmpdir(), 'haul-migrate-')));
  const imagesDir = join(workDir, 'images');
  await mkdir(imagesDir, { recursive: true });
  const { session } = await dialLink(options.to, options);
  let linkFailure: Error | undefined;
  session.once('aborted', (error) => (linkFailure = error));
  // what the destination reports: the restore, (lazy) the last page, and the end of its channel
  const reports = new ControlInbox(session);
  // the destination opens its channels as soon as the session exists: listen before any await
  const faults = new FaultQueue(session);
  // CRIU holds the frozen source at post-dump until haul answers: ok ends it, anything else resumes it
  const gate = await ActionScript.create(join(workDir, 'actions'), { steps: { 'post-dump': { hold: true } } });
  const control = session.openChannel(ChannelKind.CONTROL, 'migration');
  const criuVersionText = `${version.major}.${version.minor}.${version.patch}`;
  await sendControl(control.writable, { migration_start: { mode, pid: options.pid, criu_version: criuVersionText, instance: '', migration_id: '', source_host: '', restore_timeout_ms: 0, manager_addresses: [] } });
  return {
    progress: options.onProgress ?? (() => {}),
    version,
    layout: headerLayoutFor(version),
    workDir,
    imagesDir,
    session,
    reports,
    gate,
    control,
    /** Page faults the destination asks the source to serve (lazy mode). */
    faults,
    criu: options.criuBinary ? { binary: options.criuBinary } : {},
    /** The error to report: the link's reason when it failed first, CRIU's errors being only its echo. */
    failure(error: unknown): Error {
      if (session.isOpen) session.abort(error instanceof Error ? error.message : String(error));
      const cause = linkFailure ?? error;
      return new Error(`${mode} migration of ${options.pid} failed, the source process keeps running: ${cause instanceof Error ? cause.message : String(cause)}`, { cause: error });
    },
    async cleanUp(): Promise<void> {
      await gate.close();
      if (ownWorkDir) await rm(workDir, { recursive: true, force: true });
    },
  };
}

/**
 * Pre-copy migration of a process tree through haul: `criu dump` sends its pages to haul's page
 * server on loopback, which streams them over the link as they come; the other images follow; the
 * source stays frozen at post-dump until the destination reports its restore, and is ended only if
 * that succeeded. On any failure before, the source resumes.
 */
export async function migratePreCopy(options: MigrateOptions): Promise<MigrationSummary> {
  const { progress, layout, workDir, imagesDir, session, reports, gate, control, criu, failure, cleanUp } = await startMigration(options, 'pre-copy');
  const started = Date.now();
  progress('dumping');
  // CRIU's page-server session is a socket pair: nothing listens, so no one else can join it, and
  // a unix socket has no TCP cork to wait out at the end of the dump (dump-to-link.ts)
  const dump = startCriu(
    'dump',
    ['-t', String(options.pid), '-D', imagesDir, '--action-script', gate.path],
    { logFile: join(workDir, 'dump.log'), pageServerSocket: true, ...criu },
  );
  const forward = dumpToLinkOver(session, layout, dump.pageServer);
  const { pages } = forward;

  const stopReporting = reportPages(progress, 'pages sent', () => pages.pagesSent);
  let restored = 0;
  try {
    // pages stop flowing when the link fails, so CRIU would wait forever to reach post-dump
    await Promise.race([gate.reached('post-dump'), dump.exited.then(() => Promise.reject(new Error('criu dump ended before post-dump'))), forward.failed]).finally(stopReporting);
    const summary = await forward.received;
    const dumped = Date.now();
    progress('sending images');
    const images = await sendImageFiles(session, imagesDir);
    await sendControl(control.writable, { images_complete: { files: images.files, page_streams: pages.pageStreams, bytes: BigInt(images.bytes), filesystem_tars: 0 } });
    const sent = Date.now();
    progress('restoring on the destination');
    const result = await reports.next('restore_result');
    if (!result.ok) throw new Error(`the destination could not restore: ${result.error}`);
    restored = Date.now();
    // the destination holds its copy stopped; end this one, then let that one run
    await gate.answer('post-dump', true);
    await dump.exited;
    try {
      await sendControl(control.writable, { commit: { source_pid: options.pid } });
      await reports.ended;
    } catch (error) {
      throw new MigrationInDoubtError('pre-copy', options.pid, result.pid, error);
    }
    const running = Date.now();
    control.writable.end();
    session.close();
    const pageCount = summary.pagesReceived;
    return {
      mode: 'pre-copy', pages: pageCount, imageBytes: images.bytes, bytes: pageCount * PAGE_SIZE + images.bytes,
      dumpMs: dumped - started, transferMs: sent - dumped, restoreMs: restored - sent, downtimeMs: running - started, restoredPid: result.pid,
    };
  } catch (error) {
    if (error instanceof MigrationInDoubtError) throw error;
    // the source must keep running: fail the dump (a page server gone mid-dump, or a failed
    // post-dump) so that CRIU resumes it, then say why
    forward.abandon();
    await gate.answer('post-dump', false).catch(() => {});
    await gate.close();
    await dump.exited.catch(() => {});
    throw failure(error);
  } finally {
    await cleanUp();
  }
}

/**
 * Lazy (post-copy) migration: the destination restores from the small images at once, and the
 * memory follows. haul is the one client of the page server `criu dump --lazy-pages` leaves running:
 * it answers the destination's page faults first and pushes every other page behind them, then
 * tells CRIU all pages moved, which ends the source, and commits (the destination held its copy
 * stopped whenever the link was down meanwhile). CRIU counts a plain end of that session as
 * success, so on any failure before the last page arrived haul ends it with a bad header instead,
 * and CRIU resumes the source.
 */
export async function migrateLazy(options: MigrateOptions): Promise<MigrationSummary & { readonly lazyPages: number }> {
  const { progress, layout, workDir, imagesDir, session, reports, gate, control, faults, criu, failure, cleanUp } = await startMigration(options, 'lazy');
  // CRIU sends the pagemaps and the pages that cannot be lazy to haul's page server first, as in
  // pre-copy, then serves the lazy ones itself on the same port once post-dump returns
  // (CRIU 4.1.1 cannot take a socket pair here: dump-to-link.ts.) On that port, haul serves only
  // the dump's own connection, and CRIU's lazy page server, which takes the first client and
  // believes its CLOSE, is out of reach of every local user but root (src/host/loopback-guard.ts)
  let criuStarted: (criu: ProcessIdentity) => void = () => {};
  // a port no local user but root can bind, guarded before anything listens on it: haul's page
  // server first, then CRIU's own lazy one
  let guard: LoopbackGuard;
  let forward: Awaited<ReturnType<typeof dumpToLink>>;
  try {
    guard = await guardNewLoopbackPort();
  } catch (error) {
    await gate.close();
    await cleanUp();
    throw failure(error);
  }
  if (guard.bindableByAnyone) progress(`warning: ${guard.bindableByAnyone}; a local user who binds port ${guard.port} first can make this move fail (not take it over)`);
  try {
    forward = await dumpToLink(session, layout, new Promise<ProcessIdentity>((resolve) => (criuStarted = resolve)), {
      port: guard.port,
      onRefused: (refused) => progress(`refused a connection to the dump's page server: ${refused instanceof Error ? refused.message : String(refused)}`),
    });
  } catch (error) {
    await guard.release();
    await gate.close();
    await cleanUp();
    throw failure(error);
  }
  const port = forward.port;
  const dumped = forward.pages;

  const started = Date.now();
  progress('dumping (lazy)');
  const dump = startCriu(
    'dump',
    ['-t', String(options.pid), '-D', imagesDir, '--lazy-pages', '--page-server', '--address', '127.0.0.1', '--port', String(port), '--action-script', gate.path],
    { logFile: join(workDir, 'dump.log'), statusFd: true, ...criu },
  );
  const criuProcess = dump.child.pid === undefined ? undefined : identify(dump.child.pid);
  if (criuProcess) criuStarted(criuProcess);
  let lazyServer: Socket | undefined;
  let pulled = 0;
  let stopReporting = (): void => {};
  let pastReturn = false;
  let criuServes = false;
  try {
    await Promise.race([gate.reached('post-dump'), dump.exited.then(() => Promise.reject(new Error('criu dump ended before post-dump'))), forward.failed]);
    const eager = await forward.received;
    const dumpedAt = Date.now();
    progress('sending images');
    const images = await sendImageFiles(session, imagesDir);
    await sendControl(control.writable, { images_complete: { files: images.files, page_streams: dumped.pageStreams, bytes: BigInt(images.bytes), filesystem_tars: 0 } });
    const sent = Date.now();
    // the restored copy runs from the moment the destination reports it; a failed restore stops the pulling
    let restoredAt = 0;
    let restoreFailure: string | undefined;
    void reports.next('restore_result').then(
      (result) => (result.ok ? (restoredAt = Date.now()) : (restoreFailure = result.error)),
      () => {},
    );
    // CRIU starts its page server only once post-dump returns, and the restore needs pages before it
    // can finish, so post-dump must succeed now; from here, failure is signalled on the page server
    // CRIU's own connection to haul's page server is made: from here the port takes haul's lazy
    // client alone, before CRIU listens there (root's other sockets too: an Incus proxy device's)
    await guard.admitOnlyOwnClients();
    await gate.answer('post-dump', true);
    criuServes = true;
    await dump.ready;
    lazyServer = await guard.connect();
    // whoever listens there answers nothing haul believes until it is seen to be CRIU; CRIU then
    // stops listening, and the guard can go
    if (!criuProcess) throw new Error('criu dump did not start');
    await expectPeerProcess(lazyServer, criuProcess);
    await guard.release();
    const client = new LazyPagesClient(lazyServer, layout);
    const total = dumped.lazyRuns.reduce((sum, run) => sum + run.nrPages, 0);
    progress(`restoring on the destination; ${total} pages to follow`);
    stopReporting = reportPages(progress, 'pages moved', () => pulled);
    await moveLazyPages(session, client, dumped.lazyRuns, faults, {
      onPages: (moved) => (pulled = moved),
      stop: () => (restoreFailure === undefined ? undefined : `the destination could not restore: ${restoreFailure}`),
    });
    stopReporting();
    const result = await reports.next('restore_result');
    if (!result.ok) throw new Error(`the destination could not restore: ${result.error}`);
    await reports.next('lazy_complete');
    // the destination holds every page: from here the source ends whatever happens, never resumes
    pastReturn = true;
    await client.close().catch(() => lazyServer!.end()); // a plain end also counts as success to CRIU
    await dump.exited.catch(() => {});
    try {
      await sendControl(control.writable, { commit: { source_pid: options.pid } });
      await reports.ended;
    } catch (error) {
      throw new MigrationInDoubtError('lazy', options.pid, result.pid, error);
    }
    control.writable.end();
    session.close();
    return {
      mode: 'lazy', pages: eager.pagesReceived + pulled, lazyPages: pulled, imageBytes: images.bytes, bytes: (eager.pagesReceived + pulled) * PAGE_SIZE + images.bytes,
      dumpMs: dumpedAt - started, transferMs: sent - dumpedAt, restoreMs: restoredAt - sent, downtimeMs: restoredAt - started, restoredPid: result.pid,
    };
  } catch (error) {
    stopReporting();
    if (pastReturn) {
      if (session.isOpen) session.abort(error instanceof Error ? error.message : String(error));
      throw error;
    }
    if (lazyServer) {
      // a bad header fails CRIU's lazy page-server session, and CRIU resumes the source
      lazyServer.end(Buffer.from([0xff]));
    } else if (criuServes) {
      // past post-dump CRIU waits for a lazy client: be that client, with a bad header
      await guard.connect().then(
        (socket) => void socket.on('error', () => {}).end(Buffer.from([0xff])),
        (unreached: Error) => progress(`could not reach CRIU's lazy page server to make it resume the source: ${unreached.message}`),
      );
    } else {
      forward.abandon();
      await gate.answer('post-dump', false).catch(() => {});
      await gate.close();
    }
    await dump.exited.catch(() => {});
    throw failure(error);
  } finally {
    await guard.release();
    await cleanUp();
  }
}
