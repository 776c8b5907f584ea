import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { runCriu, RestoredTree, writeNetnsImagesForEveryCriu } from '../src/criu/index.js';
import { type EndpointOptions, LinkListener, type LinkSession } from '../src/link/index.js';
import { discardImages } from './cache-store.js';
import { DestinationMigration } from './destination-migration.js';

export interface CacheOptions extends EndpointOptions {
  readonly address: string;
  readonly port: number;
  /** Each migration gets its own image directory below this one. */
  readonly dir: string;
  readonly criuBinary?: string;
  readonly onEvent?: (event: CacheEvent) => void;
  /** A migration whose pages stop arriving for this long before its image set is complete fails (default 2 min). */
  readonly idleMs?: number;
  /** How long after reporting the restore the source has to say it ended its copy (default 2 min); then the copy here is kept stopped, in doubt. */
  readonly commitWithinMs?: number;
}

const DEFAULT_IDLE_MS = 2 * 60_000;
const DEFAULT_COMMIT_WITHIN_MS = 2 * 60_000;

export type CacheEvent =
  | { readonly kind: 'migration'; readonly id: string; readonly dir: string }
  | { readonly kind: 'restored'; readonly id: string; readonly pid: number }
  | { readonly kind: 'failed'; readonly id: string; readonly error: string }
  /** Lazy mode: every page has reached the restored copy, which no longer depends on the source; the source is told so and commits next. */
  | { readonly kind: 'pages-delivered'; readonly id: string; readonly pages: number }
  /** Lazy mode: the source has committed; the migration is over. */
  | { readonly kind: 'lazy-complete'; readonly id: string; readonly pages: number }
  /** The link failed between reporting the restore and the source's commit: the tree is kept stopped. */
  | { readonly kind: 'in-doubt'; readonly id: string; readonly pid: number; readonly error: string };

/**
 * The image-cache on the destination: takes each migration's images and pages as they arrive,
 * restores once the image set is complete and whole, and tells the source the outcome, which is
 * what lets the source end its copy (or resume it).
 */
export class ImageCache {
  private migrations = 0;

  private constructor(
    readonly listener: LinkListener,
    private readonly options: CacheOptions,
  ) {
    listener.on('session', (session) => {
      this.serve(session).catch((error: Error) => {
        // before the migration had its id (its directory could not be made, say)
        options.onEvent?.({ kind: 'failed', id: '', error: `a migration could not be served: ${error.message}` });
        if (session.isOpen) session.abort(`the cache could not take this migration: ${error.message}`);
      });
    });
  }

  static async start(options: CacheOptions): Promise<ImageCache> {
    await mkdir(options.dir, { recursive: true, mode: 0o700 });
    return new ImageCache(await LinkListener.listen(options.address, options.port, options), options);
  }

  get port(): number {
    return this.listener.port;
  }

  private async serve(session: LinkSession): Promise<void> {
    const id = `${new Date().toISOString().replace(/[:.]/g, '-')}-${++this.migrations}`;
    const migration = DestinationMigration.begin(session, join(this.options.dir, id), this.options.criuBinary ? { criuBinary: this.options.criuBinary } : {});
    const { dir, store } = migration;
    const lazyPages = migration.lazyPages;
    this.options.onEvent?.({ kind: 'migration', id, dir });
    const commitWithinMs = this.options.commitWithinMs ?? DEFAULT_COMMIT_WITHIN_MS;
    const criuBinary = this.options.criuBinary ? { binary: this.options.criuBinary } : {};
    const pidFile = join(dir, 'restored.pid');
    let tree: RestoredTree | undefined;
    let reported = false;
    /** The copy here is held stopped: the link failed after a report that let the source end its own. */
    const inDoubt = async (after: string, reason: string, held: RestoredTree): Promise<void> => {
      const error = `the link failed after ${after}, before the source confirmed it ended its copy (${reason}); pid ${held.pid} is kept stopped: if the source process is gone, run it with kill -CONT, else kill it`;
      this.options.onEvent?.({ kind: 'in-doubt', id, pid: held.pid, error });
    };
    try {
      await migration.receive({ idleMs: this.options.idleMs ?? DEFAULT_IDLE_MS });
      // a source's CRIU 4.2 writes a network namespace's image in a form CRIU 4.1 cannot restore
      await writeNetnsImagesForEveryCriu(dir);
      const lazy = store.control.messages.some((message) => message.migration_start?.mode === 'lazy');
      if (!lazy) {
        // held stopped until the source says its own copy has ended: never two running copies
        await runCriu('restore', ['-D', dir, '-d', '--leave-stopped', '--pidfile', pidFile], { logFile: join(dir, 'restore.log'), ...criuBinary });
        tree = await RestoredTree.fromPidFile(pidFile);
        if (!session.isOpen) throw new Error('the link to the source failed during the restore');
        await migration.reportRestore({ ok: true, pid: tree.pid });
        const commit = await migration.awaitCommit(commitWithinMs);
        if (!commit.committed) return await inDoubt('the restore was reported', commit.reason, tree);
        await tree.resume();
        this.options.onEvent?.({ kind: 'restored', id, pid: tree.pid });
        migration.end();
        return;
      }
      // lazy: the restore starts before the memory is here; criu lazy-pages asks haul, haul asks the source
      let restoring: RestoredTree | undefined;
      const service = await migration.serveLazy({ restoreDir: dir, restored: () => restoring });
      const { guard } = service;
      try {
        await runCriu('restore', ['--lazy-pages', '-D', dir, '-d', '--pidfile', pidFile], { logFile: join(dir, 'restore.log'), cwd: dir, ...criuBinary });
        tree = restoring = await RestoredTree.fromPidFile(pidFile);
      } catch (error) {
        // no restore will ever connect to it: the lazy-pages daemon would wait forever
        service.kill();
        await guard.release();
        throw error;
      }
      const restored = tree;
      try {
        if (!session.isOpen) throw new Error('the link to the source failed during the restore');
        guard.matchLink();
        await migration.reportRestore({ ok: true, pid: tree.pid });
        reported = true;
        this.options.onEvent?.({ kind: 'restored', id, pid: tree.pid });
        // every page is here: the source ends its copy when it hears so, and commits
        const delivered = await migration.lazyDelivered(service);
        this.options.onEvent?.({ kind: 'pages-delivered', id, pages: delivered });
        const commit = await migration.awaitCommit(commitWithinMs);
        if (!commit.committed) {
          await guard.release();
          await restored.pause();
          return await inDoubt('every page arrived', commit.reason, restored);
        }
      } finally {
        await guard.release();
      }
      await restored.resume();
      migration.end();
      this.options.onEvent?.({ kind: 'lazy-complete', id, pages: lazyPages.received });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      // restored but not confirmed: the source resumes, so this copy must not live on
      if (tree) await tree.kill().catch(() => {});
      this.options.onEvent?.({ kind: 'failed', id, error: reason });
      if (session.isOpen && reported) {
        session.abort(`lazy pages could not all be delivered, the restored copy was ended: ${reason}`);
      } else if (session.isOpen) {
        await migration.reportRestore({ ok: false, error: reason }).catch(() => {});
        migration.end();
      }
    } finally {
      await lazyPages.close().catch(() => {});
      await discardImages(dir);
    }
  }

  async close(): Promise<void> {
    await this.listener.close();
  }
}
