import { mkdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { criuVersion, type CriuVersion, type RestoredTree } from '../src/criu/index.js';
import { type LinkSession, type OutgoingChannel } from '../src/link/index.js';
import { CacheStore, type CacheStoreOptions } from './cache-store.js';
import { LazyPageStore } from './lazy-page-store.js';
import { startLazyPageService, type LazyPageService } from './lazy-restore.js';
import { ChannelKind, sendControl, type MigrationStart, openChannel } from './wire/index.js';

const IDLE_CHECK_MS = 250;

/** Until the store's image set is complete; fails once no page has arrived for `idleMs`. */
async function completeWhileArriving(store: CacheStore, idleMs: number): Promise<void> {
  let seen = store.pagesStored;
  let lastProgress = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    timer = setInterval(() => {
      if (store.pagesStored !== seen) {
        seen = store.pagesStored;
        lastProgress = Date.now();
      } else if (Date.now() - lastProgress >= idleMs) {
        reject(new Error(`no progress from the source for ${idleMs / 1000} s before its image set was complete`));
      }
    }, Math.min(IDLE_CHECK_MS, idleMs));
  });
  try {
    await Promise.race([store.complete, stalled]);
  } finally {
    clearInterval(timer);
  }
}

export type RestoreOutcome = { readonly ok: true; readonly pid: number } | { readonly ok: false; readonly error: string };

/** What the source's commit wait came to (awaitCommit). */
export type CommitOutcome =
  | { readonly committed: true }
  /** The restore was reported, then the link failed before the source said it ended its copy. */
  | { readonly committed: false; readonly reason: string };

/** Whether a report left this host: the session's attachments when it was written. */
interface Receipt {
  readonly what: string;
  readonly detached: boolean;
  readonly attachments: number;
}

/**
 * The destination side of one migration, whatever restores it: what the source sends on the
 * session is stored restore-ready in `dir` as it arrives (CacheStore; lazy pages in a
 * LazyPageStore), and everything the destination says goes back on one answers channel. The
 * restore target, haul's own `criu restore` (image-cache.ts) or Incus' (the plugin), decides when
 * and how the restore runs; this says how it went, serves its lazy pages, and waits for the
 * source's commit.
 */
export interface DestinationOptions extends CacheStoreOptions {
  /** The CRIU that restores on this host and serves lazy pages, when not the default. */
  readonly criuBinary?: string;
}

export class DestinationMigration {
  readonly store: CacheStore;
  /** The lazy pages' store (lazy mode asks the source for faults through it). */
  readonly lazyPages: LazyPageStore;
  private readonly answers: OutgoingChannel;
  private lastReceipt: Receipt | undefined;
  /**
   * Lazy mode: the version of the CRIU that will serve the pages (its page-server header layout),
   * asked as soon as the source announces a lazy migration, while the source still dumps: asked
   * between the images' arrival and the restore, it took 30-40 ms of the workload's downtime.
   */
  private lazyCriuVersion: Promise<CriuVersion> | undefined;
  private readonly criuBinary: string | undefined;

  private constructor(
    readonly session: LinkSession,
    /** The migration's own directory: images, pages, logs. */
    readonly dir: string,
    options: DestinationOptions,
  ) {
    this.criuBinary = options.criuBinary;
    // nothing awaited before every channel is listened for: the source's channels are announced
    // once, right after the handshake (an awaited mkdir waits for libuv's thread pool, and under a
    // busy one the source's control channel came and went meanwhile)
    mkdirSync(dir, { mode: 0o700 });
    this.store = new CacheStore(session, dir, options);
    this.answers = openChannel(session, ChannelKind.CONTROL, 'answers');
    this.lazyPages = LazyPageStore.forSession(session, join(dir, 'lazy-pages.bin'));
    session.once('aborted', (error) => {
      this.lazyPages.fail(error);
      this.lazyPages.close().catch(() => {});
    });
    this.store.control.next('migration_start').then(
      (start) => {
        if (start.mode !== 'lazy') return;
        this.lazyCriuVersion = criuVersion(this.criuBinary);
        this.lazyCriuVersion.catch(() => {}); // serveLazy says it, if it comes to that
      },
      () => {}, // no start: nothing to serve
    );
  }

  /**
   * Takes a session from a source; call it as the session arrives, before any await. `criuBinary`:
   * the CRIU that restores here (and serves lazy pages), when not the default.
   */
  static begin(session: LinkSession, dir: string, options: DestinationOptions = {}): DestinationMigration {
    return new DestinationMigration(session, dir, options);
  }

  /** The source's first word: what it moves, and how. */
  start(): Promise<MigrationStart> {
    return this.store.control.next('migration_start');
  }

  /** Pages pass through here once the source hears this (a container manager's dump). */
  async accept(): Promise<void> {
    await sendControl(this.answers.writable, { migration_accepted: { ok: true, error: '' } });
  }

  /** Turns the migration down before anything was stored, and forgets it. */
  async refuse(reason: string): Promise<void> {
    await sendControl(this.answers.writable, { migration_accepted: { ok: false, error: reason } });
    this.answers.writable.end();
    await this.forget();
  }

  /**
   * Until every stream the source announced is stored here, whole; then the source hears so (or
   * why not: the error is rethrown too). With `idleMs`, it fails once no page arrived for that
   * long before the set was complete: a source that keeps the link up and sends nothing would
   * otherwise hold the migration for good.
   */
  async receive(options: { readonly idleMs?: number } = {}): Promise<void> {
    try {
      await (options.idleMs === undefined ? this.store.complete : completeWhileArriving(this.store, options.idleMs));
    } catch (error) {
      if (this.session.isOpen) await this.reportStored(error instanceof Error ? error.message : String(error)).catch(() => {});
      throw error;
    }
    await this.reportStored();
  }

  /** Every announced stream is stored, whole (or why not): the source's signal that the restore can come. */
  private async reportStored(error?: string): Promise<void> {
    await sendControl(this.answers.writable, { images_stored: error === undefined ? { ok: true, error: '' } : { ok: false, error } });
  }

  /** How the restore went: what the source ends or resumes its copy on. */
  async reportRestore(outcome: RestoreOutcome): Promise<void> {
    await sendControl(this.answers.writable, { restore_result: outcome.ok ? { ok: true, error: '', pid: outcome.pid } : { ok: false, error: outcome.error, pid: 0 } });
    this.lastReceipt = { what: 'the restore', detached: !this.session.attached, attachments: this.session.attachments };
  }

  /**
   * Lazy mode: `criu lazy-pages` for the restore of the images in `restoreDir`, served from the
   * link; resolves once it listens. Once every page is delivered, the source hears so.
   */
  async serveLazy(options: { readonly restoreDir: string; readonly restored: () => RestoredTree | undefined }): Promise<LazyPageService> {
    return startLazyPageService({
      session: this.session,
      pages: this.lazyPages,
      dir: options.restoreDir,
      logFile: join(this.dir, 'lazy-pages.log'),
      restored: options.restored,
      ...(this.criuBinary ? { criuBinary: this.criuBinary } : {}),
      criuVersion: await (this.lazyCriuVersion ?? criuVersion(this.criuBinary)),
    });
  }

  /**
   * Lazy mode: until `criu lazy-pages` has delivered every page to the restored copy; from then
   * losing the link no longer ends that copy. `beforeReport` (letting it run, say) comes before
   * the source hears that every page is here, and may end its own. Resolves the pages delivered.
   */
  async lazyDelivered(service: LazyPageService, beforeReport?: () => Promise<void>): Promise<number> {
    const pages = await service.delivered();
    service.guard.pagesComplete();
    await beforeReport?.();
    await this.reportLazyComplete(pages);
    return pages;
  }

  /** Every lazy page has reached the restored copy: the source may end its own. */
  private async reportLazyComplete(pages: number): Promise<void> {
    await sendControl(this.answers.writable, { lazy_complete: { pages: BigInt(pages) } });
    this.lastReceipt = { what: "every page's arrival", detached: !this.session.attached, attachments: this.session.attachments };
  }

  /**
   * Waits up to `withinMs` for the source to say it ended its copy, after the last report. When the
   * link failed before that report could leave (it was written with no connection, and none came
   * since), the source resumes its copy for sure: that is an error. After it may have left, the
   * outcome is in doubt: the source may have ended its copy on the report, or resumed without it.
   */
  async awaitCommit(withinMs: number): Promise<CommitOutcome> {
    const receipt = this.lastReceipt;
    try {
      await this.store.control.next('commit', withinMs);
      return { committed: true };
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
      if (!receipt || (receipt.detached && this.session.attachments === receipt.attachments)) {
        throw new Error(`the link to the source failed before ${receipt?.what ?? 'the restore'} could be reported (${why})`, { cause: error });
      }
      return { committed: false, reason: why };
    }
  }

  /** Says nothing more on the answers channel. */
  end(): void {
    this.answers.writable.end();
  }

  /** Drops the lazy pages' store and the directory: the migration never got anywhere. */
  async forget(): Promise<void> {
    await this.lazyPages.close().catch(() => {});
    await rm(this.dir, { recursive: true, force: true });
  }
}
