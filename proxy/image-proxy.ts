import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PAGE_SIZE, startCriu, criuVersion, headerLayoutFor, ActionScript } from '../src/criu/index.js';
import type { EndpointOptions } from '../src/link/index.js';
import { identify } from '../src/host/index.js';
import { LazyDump } from './lazy-dump.js';
import { dumpToLinkOver } from './dump-to-link.js';
import { SourceMigration } from './source-migration.js';
import { runPreCopySource } from './source-pre-copy.js';
import { runLazySource } from './source-lazy.js';
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
  // CRIU holds the frozen source at post-dump until haul answers: ok ends it, anything else resumes it
  const gate = await ActionScript.create(join(workDir, 'actions'), { steps: { 'post-dump': { hold: true }, 'status-ready': { tell: true } } });
  await migration.announce({ pid: options.pid, criuVersion: `${version.major}.${version.minor}.${version.patch}`, instance: '', migration_id: '', source_host: '', restore_timeout_ms: 0, manager_addresses: [] });
  return {
    progress: options.onProgress ?? (() => {}),
    layout: headerLayoutFor(version),
    workDir,
    imagesDir,
    migration,
    gate,
    criu: options.criuBinary ? { binary: options.criuBinary } : {},
    /** The error to report: the link's reason when it failed first, CRIU's errors being only its echo. */
    failure(error: unknown): Error {
      migration.abort(error instanceof Error ? error.message : String(error));
      return new MigrationFailedError(mode, options.pid, migration.linkFailure ?? error);
    },
    async cleanUp(): Promise<void> {
      await gate.close();
      if (ownWorkDir) await rm(workDir, { recursive: true, force: true });
    },
  };
}

/**
 * Pre-copy migration of a process tree through haul (runPreCopySource): `criu dump` sends its
 * pages to haul's page server on a socket pair, which streams them over the link as they come;
 * the other images follow; the source stays frozen at post-dump until the destination reports its
 * restore, and is ended only if that succeeded, then the destination's copy runs (the commit).
 */
export async function migratePreCopy(options: MigrateOptions): Promise<MigrationSummary> {
  const { progress, layout, workDir, imagesDir, migration, gate, criu, failure, cleanUp } = await startMigration(options, 'pre-copy');
  const started = Date.now();
  progress('dumping');
  // CRIU's page-server session is a socket pair: nothing listens, so no one else can join it, and
  // a unix socket has no TCP cork to wait out at the end of the dump (dump-to-link.ts)
  const dump = startCriu(
    'dump',
    ['-t', String(options.pid), '-D', imagesDir, '--action-script', gate.path],
    { logFile: join(workDir, 'dump.log'), pageServerSocket: true, ...criu },
  );
  const intake = dumpToLinkOver(migration.session, layout, dump.pageServer);
  const stopReporting = reportPages(progress, 'pages sent', () => intake.pages.pagesSent);
  try {
    const run = await runPreCopySource(migration, intake, {
      dumped: Promise.race([gate.reached('post-dump'), dump.exited.then(() => Promise.reject(new Error('criu dump ended before post-dump')))]).finally(stopReporting),
      sendRest: () => migration.sendImages(imagesDir).then((images) => ({ files: images.files, bytes: images.bytes, filesystemTars: 0 })),
      onPhase: (phase) => phase === 'sending-images' ? progress('sending images') : phase === 'restoring' && progress('restoring on the destination'),
      restored: async (report) => {
        const { result, at } = await report;
        if (!result.ok) throw new Error(`the destination could not restore: ${result.error}`);
        // the destination holds its copy stopped; end this one, then let that one run
        await gate.answer('post-dump', true);
        await dump.exited;
        await migration.commit(options.pid, (cause) => new MigrationInDoubtError('pre-copy', options.pid, result.pid, cause));
        return { restoredPid: result.pid, restoredAt: at };
      },
      isPastReturn: (error) => error instanceof MigrationInDoubtError,
      // the source must keep running: a failed post-dump makes CRIU resume it
      resumeSource: async () => {
        await gate.answer('post-dump', false).catch(() => {});
        await gate.close();
        await dump.exited.catch(() => {});
      },
    });
    const running = Date.now();
    migration.finish();
    return {
      mode: 'pre-copy', pages: run.pages, imageBytes: run.rest.bytes, bytes: run.pages * PAGE_SIZE + run.rest.bytes,
      dumpMs: run.dumpedAt - started, transferMs: run.sentAt - run.dumpedAt, restoreMs: (run.restoredAt ?? running) - run.sentAt, downtimeMs: running - started, restoredPid: run.restoredPid ?? 0,
    };
  } catch (error) {
    if (error instanceof MigrationInDoubtError) throw error;
    throw failure(error);
  } finally {
    stopReporting();
    await cleanUp();
  }
}

/**
 * Lazy (post-copy) migration (runLazySource): the destination restores from the small images at
 * once, and the memory follows. `criu dump --lazy-pages` writes the images (and the few pages that
 * cannot be lazy) into haul's work directory, which haul sends while CRIU waits at post-dump; then
 * CRIU serves the lazy pages to haul. Once the destination has every page, haul ends CRIU's
 * session, which ends the source, and commits (the destination held its copy stopped whenever the
 * link was down meanwhile). On any failure before the last page arrived, CRIU resumes the source.
 */
export async function migrateLazy(options: MigrateOptions): Promise<MigrationSummary & { readonly lazyPages: number }> {
  const { progress, layout, workDir, imagesDir, migration, gate, criu, failure, cleanUp } = await startMigration(options, 'lazy');
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
  let pulled = 0;
  let stopReporting = (): void => {};
  try {
    const run = await runLazySource(migration, lazy, {
      criu: criuProcess,
      layout,
      postDump: gate.reached('post-dump'),
      dumpEnded: dump.exited.catch(() => {}),
      statusReady: gate.reached('status-ready'),
      dumpDir: imagesDir,
      pagemapDir: imagesDir,
      sendRest: () => migration.sendImages(imagesDir).then((images) => ({ files: images.files, bytes: images.bytes, filesystemTars: 0 })),
      releasePostDump: () => gate.answer('post-dump', true),
      // before post-dump's answer: the dump fails there, and CRIU resumes the source
      failPostDump: () => gate.answer('post-dump', false).then(() => true),
      onResumeUnreached: (unreached) => {
        // CRIU would wait for a lazy client for good: ended, it lets go of the source (ptrace)
        progress(`could not reach CRIU's lazy page server to make it resume the source (${unreached.message}); ending criu dump`);
        dump.child.kill('SIGKILL');
      },
      onPhase: (phase, { lazyPages }) => {
        if (phase === 'sending-images') progress('sending images');
        if (phase === 'moving-lazy-pages') {
          progress(`restoring on the destination; ${lazyPages} pages to follow`);
          stopReporting = reportPages(progress, 'pages moved', () => pulled);
        }
        if (phase === 'awaiting-last-page') stopReporting();
      },
      onPages: (moved) => (pulled = moved),
      sourceEnded: async (restoredPid) => {
        await dump.exited.catch(() => {});
        await migration.commit(options.pid, (cause) => new MigrationInDoubtError('lazy', options.pid, restoredPid, cause));
      },
    });
    migration.finish();
    const pages = run.eagerPages + run.lazyPages;
    return {
      mode: 'lazy', pages, lazyPages: run.lazyPages, imageBytes: run.rest.bytes, bytes: run.lazyPages * PAGE_SIZE + run.rest.bytes,
      dumpMs: run.dumpedAt - started, transferMs: run.sentAt - run.dumpedAt, restoreMs: run.restoredAt - run.sentAt, downtimeMs: run.restoredAt - started, restoredPid: run.restoredPid,
    };
  } catch (error) {
    stopReporting();
    // past the point of return the source has ended: nothing resumes, the error is as it is
    if (error instanceof MigrationInDoubtError) throw error;
    await gate.close();
    await dump.exited.catch(() => {});
    throw failure(error);
  } finally {
    await lazy.releaseWhenGone(criuProcess).catch(() => {});
    await cleanUp();
  }
}
