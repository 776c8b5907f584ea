import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PAGE_SIZE, startCriu, criuVersion, headerLayoutFor, ActionScript, isPagesFileName, pagesStoredIn, lazyRunsIn } from '../src/criu/index.js';
import type { EndpointOptions } from '../src/link/index.js';
import { identify } from '../src/host/index.js';
import { LazyDump } from './lazy-dump.js';
import { dumpToLinkOver } from './dump-to-link.js';
import { SourceMigration } from './source-migration.js';
import { MigrationFailedError, MigrationInDoubtError } from './migration-errors.js';
import type { Mode } from './mode.js';

export interface MigrateOptions extends EndpointOptions {
  readonly pid: number;
  /** ws://HOST:PORT (insecure, loopback only) or wss://HOST:PORT */
  readonly to: string;
  readonly criuBinary?: string;
  /** Where the dump's images and CRIU's log go on the source (never the pages: a lazy dump's few non-lazy ones are removed once sent). */
  readonly workDir?: string;
  readonly onProgress?: (stage: string) => void;
}

export interface MigrationSummary {
  readonly mode: Mode;
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
async function startMigration(options: MigrateOptions, mode: Mode) {
  const version = await criuVersion(options.criuBinary);
  const ownWorkDir = !options.workDir;
  const workDir = options.workDir ?? (await mkdtemp(join(tmpdir(), 'haul-migrate-')));
  const imagesDir = join(workDir, 'images');
  await mkdir(imagesDir, { recursive: true });
  const migration = await SourceMigration.dial(options.to, options, mode);
  const { session } = migration;
  let linkFailure: Error | undefined;
  session.once('aborted', (error) => (linkFailure = error));
  // CRIU holds the frozen source at post-dump until haul answers: ok ends it, anything else resumes it
  const gate = await ActionScript.create(join(workDir, 'actions'), { steps: { 'post-dump': { hold: true }, 'status-ready': { tell: true } } });
  await migration.announce({ pid: options.pid, criuVersion: `${version.major}.${version.minor}.${version.patch}`, instance: '', migration_id: '', source_host: '', restore_timeout_ms: 0, manager_addresses: [] });
  return {
    progress: options.onProgress ?? (() => {}),
    version,
    layout: headerLayoutFor(version),
    workDir,
    imagesDir,
    session,
    migration,
    gate,
    criu: options.criuBinary ? { binary: options.criuBinary } : {},
    /** The error to report: the link's reason when it failed first, CRIU's errors being only its echo. */
    failure(error: unknown): Error {
      if (session.isOpen) session.abort(error instanceof Error ? error.message : String(error));
      return new MigrationFailedError(mode, options.pid, linkFailure ?? error);
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
  const { progress, layout, workDir, imagesDir, session, migration, gate, criu, failure, cleanUp } = await startMigration(options, 'pre-copy');
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
    const images = await migration.sendImages(imagesDir);
    await migration.imagesComplete({ files: images.files, pageStreams: pages.pageStreams, bytes: images.bytes, filesystemTars: 0 });
    const sent = Date.now();
    progress('restoring on the destination');
    const result = await migration.restoreReport();
    if (!result.ok) throw new Error(`the destination could not restore: ${result.error}`);
    restored = Date.now();
    // the destination holds its copy stopped; end this one, then let that one run
    await gate.answer('post-dump', true);
    await dump.exited;
    await migration.commit(options.pid, (cause) => new MigrationInDoubtError('pre-copy', options.pid, result.pid, cause));
    const running = Date.now();
    migration.finish();
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
 * memory follows. `criu dump --lazy-pages` writes the images (and the few pages that cannot be lazy)
 * into haul's work directory, which haul sends while CRIU waits at post-dump; then CRIU serves the
 * lazy pages, and haul, its one client (LazyDump), answers the destination's page faults first and
 * pushes every other page behind them. Once the destination has every page, haul ends CRIU's
 * session, which ends the source, and commits (the destination held its copy stopped whenever the
 * link was down meanwhile). On any failure before the last page arrived, CRIU resumes the source.
 */
export async function migrateLazy(options: MigrateOptions): Promise<MigrationSummary & { readonly lazyPages: number }> {
  const { progress, layout, workDir, imagesDir, session, migration, gate, criu, failure, cleanUp } = await startMigration(options, 'lazy');
  let lazy: LazyDump;
  try {
    lazy = await LazyDump.prepare();
  } catch (error) {
    await cleanUp();
    throw failure(error);
  }
  if (lazy.bindableByAnyone) progress(`warning: ${lazy.bindableByAnyone}; a local user who binds port ${lazy.port} first can make this move fail (not take it over)`);

  const started = Date.now();
  progress('dumping (lazy)');
  const dump = startCriu('dump', ['-t', String(options.pid), '-D', imagesDir, ...lazy.criuArgs(), '--action-script', gate.path], { logFile: join(workDir, 'dump.log'), ...criu });
  const criuProcess = dump.child.pid === undefined ? undefined : identify(dump.child.pid);
  const listening = gate.reached('status-ready');
  let pulled = 0;
  let stopReporting = (): void => {};
  let pastReturn = false;
  let pastPostDump = false;
  try {
    const aborted = new Promise<never>((_, reject) => session.once('aborted', reject));
    aborted.catch(() => {});
    await Promise.race([gate.reached('post-dump'), dump.exited.then(() => Promise.reject(new Error('criu dump ended before post-dump'))), aborted]);
    const dumpedAt = Date.now();
    const eager = await pagesStoredIn(imagesDir);
    const lazyRuns = await lazyRunsIn(imagesDir);
    progress('sending images');
    const images = await migration.sendImages(imagesDir);
    await migration.imagesComplete({ files: images.files, pageStreams: 0, bytes: images.bytes, filesystemTars: 0 });
    // the few pages that could not be lazy are on the link now: none stays on the source's disk
    await removePageFiles(imagesDir);
    const sent = Date.now();
    // the restored copy runs from the moment the destination reports it; a failed restore stops the pulling
    let restoredAt = 0;
    let restoreFailure: string | undefined;
    void migration.restoreReport().then(
      (result) => (result.ok ? (restoredAt = Date.now()) : (restoreFailure = result.error)),
      () => {},
    );
    // CRIU starts its lazy page server only once post-dump returns, and the restore needs pages
    // before it can finish, so post-dump must succeed now; from here, failure is signalled on the
    // lazy page server
    pastPostDump = true;
    await gate.answer('post-dump', true);
    if (!criuProcess) throw new Error('criu dump did not start');
    const client = await lazy.connect(criuProcess, layout, listening);
    const total = lazyRuns.reduce((sum, run) => sum + run.nrPages, 0);
    progress(`restoring on the destination; ${total} pages to follow`);
    stopReporting = reportPages(progress, 'pages moved', () => pulled);
    await migration.movePages(client, lazyRuns, {
      onPages: (moved) => (pulled = moved),
      stop: () => (restoreFailure === undefined ? undefined : `the destination could not restore: ${restoreFailure}`),
    });
    stopReporting();
    const result = await migration.restoreReport();
    if (!result.ok) throw new Error(`the destination could not restore: ${result.error}`);
    await migration.lazyComplete();
    // the destination holds every page: from here the source ends whatever happens, never resumes
    pastReturn = true;
    await lazy.end();
    await dump.exited.catch(() => {});
    await migration.commit(options.pid, (cause) => new MigrationInDoubtError('lazy', options.pid, result.pid, cause));
    migration.finish();
    const pages = eager + pulled;
    return {
      mode: 'lazy', pages, lazyPages: pulled, imageBytes: images.bytes, bytes: pulled * PAGE_SIZE + images.bytes,
      dumpMs: dumpedAt - started, transferMs: sent - dumpedAt, restoreMs: restoredAt - sent, downtimeMs: restoredAt - started, restoredPid: result.pid,
    };
  } catch (error) {
    stopReporting();
    if (pastReturn) {
      if (session.isOpen) session.abort(error instanceof Error ? error.message : String(error));
      throw error;
    }
    if (pastPostDump) {
      await lazy.resume(listening).catch((unreached: Error) => {
        // CRIU would wait for a lazy client for good: ended, it lets go of the source (ptrace)
        progress(`could not reach CRIU's lazy page server to make it resume the source (${unreached.message}); ending criu dump`);
        dump.child.kill('SIGKILL');
      });
      await gate.close();
    } else {
      // before post-dump's answer: the dump fails there, and CRIU resumes the source
      await gate.answer('post-dump', false).catch(() => {});
      await gate.close();
    }
    await dump.exited.catch(() => {});
    throw failure(error);
  } finally {
    await lazy.releaseWhenGone(criuProcess).catch(() => {});
    await removePageFiles(imagesDir).catch(() => {});
    await cleanUp();
  }
}

/** The page data CRIU wrote into `dir` (pages-*.img), once sent or no longer wanted. */
async function removePageFiles(dir: string): Promise<void> {
  const names = (await readdir(dir).catch(() => [])).filter(isPagesFileName);
  await Promise.all(names.map((name) => rm(join(dir, name), { force: true })));
}
