import type { RestoreResult } from './wire/index.js';
import type { DumpToLink } from './dump-to-link.js';
import type { SourceMigration } from './source-migration.js';

/** How long the destination may take to store every page, and to report its restore. */
export const DESTINATION_REPORT_MS = 10 * 60_000;
const PAGE_COUNT_MS = 500;

/** What the source's run is doing, for the front end's progress (its own words for each). */
export type SourcePhase = 'sending-images' | 'restoring' | 'moving-lazy-pages' | 'awaiting-last-page';

/** What the source sent besides the page streams. */
export interface RestOfImageSet {
  readonly files: number;
  readonly bytes: number;
  readonly filesystemTars: number;
}

/** The destination's report of its restore, and when it came. */
export interface TimedReport {
  readonly result: RestoreResult;
  readonly at: number;
}

/**
 * What only the front end knows of a pre-copy source: how its dump is told to be over, what else
 * goes with the pages, and who decides the restore (the "restore target" as seen from the source).
 */
export interface PreCopySourceSeams {
  /** Settles once CRIU's dump is over (its pages handed to the intake); rejects when the dump failed. */
  readonly dumped: Promise<unknown>;
  /** After the pages, the rest of the image set: image files, the disk's changes. */
  sendRest(pages: number): Promise<RestOfImageSet>;
  /**
   * Once the destination holds every stream: until the restore is decided and the source's copy
   * ended (or left to its manager); rejects to resume the source. `report` is the destination's
   * own word, with its time.
   */
  restored(report: Promise<TimedReport>): Promise<RestoreSettled>;
  /** The migration failed before the source's copy ended: make CRIU resume it (and wait for that). */
  resumeSource(): Promise<void>;
  /** Errors the front end rethrows as they are: the source's copy has ended, no resume. */
  readonly isPastReturn?: (error: unknown) => boolean;
  readonly onPhase?: (phase: SourcePhase) => void;
  readonly onPages?: (pages: number) => void;
}

/** How the restore was settled: the destination's pid and when its copy ran, where known. */
export interface RestoreSettled {
  readonly restoredPid?: number;
  readonly restoredAt?: number;
}

export interface PreCopySourceResult extends RestoreSettled {
  readonly pages: number;
  readonly pageStreams: number;
  readonly rest: RestOfImageSet;
  readonly dumpedAt: number;
  readonly sentAt: number;
}

/**
 * The source of every pre-copy migration, `haul migrate` and `incus move` alike: the pages flow
 * from the dump through `intake` onto the link while CRIU dumps; once the dump is over, the rest of
 * the image set follows, the count of it all, and the destination's word that it stored every
 * stream whole; then the front end's restore target decides. Any failure before the source's
 * copy ended drops CRIU's page-server session (the dump fails, and CRIU resumes the source), has
 * the front end resume it, and ends the session with the reason.
 */
export async function runPreCopySource(migration: SourceMigration, intake: DumpToLink, seams: PreCopySourceSeams): Promise<PreCopySourceResult> {
  // no deadline of its own: a large image set takes what it takes, and the restore target decides
  // how long it waits once the restore is under way (the wait ends with the session in any case)
  const report = migration.restoreReport().then((result) => ({ result, at: Date.now() }));
  report.catch(() => {});
  const counting = setInterval(() => seams.onPages?.(intake.pages.pagesSent), PAGE_COUNT_MS);
  try {
    // pages stop flowing when the link fails, and CRIU would wait on its page-server session forever
    await Promise.race([seams.dumped, intake.failed]).finally(() => clearInterval(counting));
    const summary = await intake.received;
    seams.onPages?.(summary.pagesReceived);
    const dumpedAt = Date.now();
    seams.onPhase?.('sending-images');
    const rest = await seams.sendRest(summary.pagesReceived);
    await migration.imagesComplete({ files: rest.files, pageStreams: intake.pages.pageStreams, bytes: rest.bytes, filesystemTars: rest.filesystemTars });
    await migration.stored(DESTINATION_REPORT_MS);
    const sentAt = Date.now();
    seams.onPhase?.('restoring');
    const settled = await seams.restored(report);
    return { ...settled, pages: summary.pagesReceived, pageStreams: intake.pages.pageStreams, rest, dumpedAt, sentAt };
  } catch (error) {
    if (seams.isPastReturn?.(error)) throw error;
    // the destination hears first, and drops its copy, before the source resumes
    migration.abort(error instanceof Error ? error.message : String(error));
    // a page server gone mid-dump fails the dump (after it ended, nothing is dropped)
    intake.abandon();
    await seams.resumeSource().catch(() => {});
    throw error;
  }
}
