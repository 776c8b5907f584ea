import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isPagesFileName, lazyRunsIn, pagesStoredIn, writePagemapsForEveryCriu, type HeaderLayout } from '../src/criu/index.js';
import { isRunning, type ProcessIdentity } from '../src/host/index.js';
import type { LazyDump } from './lazy-dump.js';
import { DESTINATION_REPORT_MS, type RestOfImageSet, type SourcePhase } from './source-pre-copy.js';
import type { SourceMigration } from './source-migration.js';

/** How often a lazy dump's CRIU is looked at until post-dump, where its end is not otherwise heard. */
const DUMP_POLL_MS = 250;

/**
 * What only the front end knows of a lazy source: the dump's CRIU and its action script, where the
 * images are by post-dump, what goes with the eager pages, and what its manager says.
 */
export interface LazySourceSeams {
  /** The dump's CRIU process, as the check of who answers on its lazy page server needs it. */
  readonly criu: ProcessIdentity | undefined;
  readonly layout: HeaderLayout;
  /** Resolves once the dump is at post-dump with its images in place (pagemapDir). */
  readonly postDump: Promise<unknown>;
  /** Resolves when CRIU has ended; without it, CRIU's process is looked at until post-dump. */
  readonly dumpEnded?: Promise<unknown>;
  /** Resolves once CRIU's lazy page server listens (its status-ready action). */
  readonly statusReady: Promise<unknown>;
  /** Where the dump wrote the pages that cannot be lazy (haul's own directory). */
  readonly dumpDir: string;
  /** Where the pagemaps are by post-dump. */
  readonly pagemapDir: string;
  /** The image set but the lazy pages: the eager pages' files, the other images, the disk's changes. */
  sendRest(eagerPages: number): Promise<RestOfImageSet>;
  /** Lets CRIU past post-dump, where the front end holds it (its lazy page server starts only then). */
  releasePostDump?(): Promise<void>;
  /**
   * The migration failed: fails the dump at post-dump if it is not past it yet (CRIU then resumes
   * the source) and says whether it did; past it, the source resumes on its lazy page server.
   */
  failPostDump(): Promise<boolean>;
  /** CRIU's lazy page server could not be reached to make it resume the source. */
  onResumeUnreached(error: Error): void;
  /** Why to stop moving pages, from the manager's side (its own restore step failed). */
  readonly managerFailure?: () => string | undefined;
  /**
   * Only the destination's faults and the small runs (moveLazyPages) are served until the restore
   * is reported, or this settles, or at most `atMostMs`; without it, every page is pushed from the
   * start.
   */
  readonly holdPush?: { readonly hint?: Promise<unknown>; readonly atMostMs: number };
  /** Once every page is on the destination and restored there: the manager's verdict; rejects to resume the source. */
  managerVerdict?(): Promise<void>;
  /** After CRIU was told to end the source: what the front end waits for before the migration is over (CRIU's end, the commit). */
  sourceEnded?(restoredPid: number): Promise<void>;
  readonly onPhase?: (phase: SourcePhase, detail: { readonly eagerPages: number; readonly lazyPages: number }) => void;
  readonly onPages?: (movedLazy: number) => void;
}

export interface LazySourceResult {
  readonly eagerPages: number;
  readonly lazyPages: number;
  readonly rest: RestOfImageSet;
  readonly restoredPid: number;
  readonly dumpedAt: number;
  readonly sentAt: number;
  /** When the destination reported its restore: its copy runs from then. */
  readonly restoredAt: number;
}

/**
 * The source of every lazy migration, `haul migrate --lazy` and `incus move` alike, the dump run
 * as LazyDump sets it up: once it is at post-dump, the images and the few pages that cannot be
 * lazy go over as files (none stays on this disk), the destination stores them and restores; CRIU,
 * let past post-dump, serves the lazy pages, and haul, its one client, answers the destination's
 * faults first and pushes every other page behind them. Once the destination has every page (and
 * the manager, if any, agrees), a plain end of CRIU's session ends the source. On any failure
 * before, the source resumes: at post-dump, or by a bad header on the lazy page server.
 */
export async function runLazySource(migration: SourceMigration, dump: LazyDump, seams: LazySourceSeams): Promise<LazySourceResult> {
  // the restored copy runs from the moment the destination reports it; a failed restore stops the
  // pulling. No deadline of its own: the wait ends with the session, and the pages' moving has its own
  const report = migration.restoreReport().then((result) => ({ result, at: Date.now() }));
  let restoreFailure: string | undefined;
  const restoreReported = report.then(({ result }) => void (result.ok || (restoreFailure = `the destination could not restore: ${result.error}`)), () => {});
  let pastReturn = false;
  let releasedPostDump = false;
  try {
    await dumpOver(migration, seams);
    const dumpedAt = Date.now();
    // a destination's CRIU older than 4.2 reads CRIU 4.2's pagemaps as empty: written in the form
    // every CRIU reads, where they still are (the plugin rewrites them before it moves them into
    // Incus' directory, lazy-early-actions.ts)
    await writePagemapsForEveryCriu(seams.dumpDir);
    const eagerPages = await pagesStoredIn(seams.dumpDir);
    const lazyRuns = await lazyRunsIn(seams.pagemapDir);
    const total = lazyRuns.reduce((sum, run) => sum + run.nrPages, 0);
    seams.onPhase?.('sending-images', { eagerPages, lazyPages: total });
    const rest = await seams.sendRest(eagerPages);
    await migration.imagesComplete({ files: rest.files, pageStreams: 0, bytes: rest.bytes, filesystemTars: rest.filesystemTars });
    // the few pages that could not be lazy are on the link now: none stays on the source's disk
    await removePageFiles(seams.dumpDir);
    // CRIU's lazy page server starts while the destination stores them (its restore needs both):
    // waiting for the one before starting the other would put CRIU's start inside the downtime
    const stored = migration.stored(DESTINATION_REPORT_MS);
    let storeFailure: string | undefined;
    stored.catch((error: Error) => (storeFailure = error.message));
    const sentAt = Date.now();
    // CRIU starts its lazy page server only once post-dump returns, and the restore needs pages
    // before it can finish, so post-dump must succeed now; from here, failure is signalled on the
    // lazy page server
    releasedPostDump = true;
    await seams.releasePostDump?.();
    if (!seams.criu) throw new Error('criu dump did not start');
    const client = await dump.connect(seams.criu, seams.layout, seams.statusReady);
    seams.onPhase?.('moving-lazy-pages', { eagerPages, lazyPages: total });
    const hold = seams.holdPush;
    const lazyPages = await migration.movePages(client, lazyRuns, {
      onPages: (moved) => seams.onPages?.(moved),
      onAllSent: () => seams.onPhase?.('awaiting-last-page', { eagerPages, lazyPages: total }),
      stop: () => seams.managerFailure?.() ?? restoreFailure ?? storeFailure,
      // while the destination restores, its faults and the small runs alone: pushing the rest
      // then (a whole container's memory at 1 GiB) slowed the restore and Incus' own steps
      ...(hold ? { pushFrom: Promise.race([restoreReported, hold.hint ?? new Promise(() => {}), sleep(hold.atMostMs, undefined, { ref: false })]) } : {}),
    });
    await stored;
    // the restore's report first: a failed restore ends the destination's answers without lazy_complete
    const { result, at: restoredAt } = await report;
    if (!result.ok) throw new Error(`the destination could not restore: ${result.error}`);
    await migration.lazyComplete(DESTINATION_REPORT_MS);
    await seams.managerVerdict?.();
    // the destination holds every page and runs its copy: from here the source ends whatever
    // happens, never resumes
    pastReturn = true;
    await dump.end();
    await seams.sourceEnded?.(result.pid);
    return { eagerPages, lazyPages, rest, restoredPid: result.pid, dumpedAt, sentAt, restoredAt };
  } catch (error) {
    // the destination hears first, and ends its copy, before the source resumes
    migration.abort(error instanceof Error ? error.message : String(error));
    if (!pastReturn) {
      // a held post-dump whose answer could not be written fails all the same, once the front end
      // closes its action script: that counts as failed there
      const failedThere = !releasedPostDump && (await seams.failPostDump().catch(() => true));
      if (!failedThere) await dump.resume(seams.statusReady).catch((unreached: Error) => seams.onResumeUnreached(unreached));
    }
    throw error;
  } finally {
    await removePageFiles(seams.dumpDir).catch(() => {});
  }
}

/**
 * Until the lazy dump is at post-dump; fails when the link does, or when CRIU ends without getting
 * there (it failed, and the source runs on).
 */
async function dumpOver(migration: SourceMigration, seams: LazySourceSeams): Promise<void> {
  const { session } = migration;
  let over = false;
  // the link may have failed while the dump was prepared, before anything listened
  const aborted = session.isOpen ? new Promise<never>((_, reject) => session.once('aborted', (error: Error) => reject(error))) : Promise.reject(new Error('the link to the destination failed before the dump began'));
  aborted.catch(() => {});
  const ended = (async (): Promise<never> => {
    if (seams.dumpEnded) await seams.dumpEnded;
    else while (!over && (!seams.criu || isRunning(seams.criu))) await sleep(DUMP_POLL_MS);
    throw new Error('criu dump ended before its post-dump step: the dump failed (see its log)');
  })();
  ended.catch(() => {});
  try {
    await Promise.race([seams.postDump, aborted, ended]);
  } finally {
    over = true;
  }
}

/** The page data CRIU wrote into `dir` (pages-*.img), once sent or no longer wanted. */
async function removePageFiles(dir: string): Promise<void> {
  const names = (await readdir(dir).catch(() => [])).filter(isPagesFileName);
  await Promise.all(names.map((name) => rm(join(dir, name), { force: true })));
}
