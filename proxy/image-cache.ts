import { mkdirSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { runCriu, RestoredTree } from '../src/criu/index.js';
import { sendControl, type EndpointOptions, ChannelKind, LinkListener, type LinkSession } from '../src/link/index.js';
import { CacheStore, discardImages } from './cache-store.js';
import { startLazyPageService } from './lazy-restore.js';
import { LazyPageStore } from './lazy-page-store.js';

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
const IDLE_CHECK_MS = 250;

/**
 * Until the store's image set is complete; fails once no page has arrived for `idleMs` (a source
 * that keeps the link up and sends nothing would otherwise hold the migration for good).
 */
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

export type CacheEvent =
  | { readonly kind: 'migration'; readonly id: string; readonly dir: string }
  | { readonly kind: 'restored'; readonly id: string; readonly pid: number }
  | { readonly kind: 'failed'; readonly id: string; readonly error: string }
  /** Lazy mode: every page has reached the restored copy; the migration is over. */
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
    const dir = join(this.options.dir, id);
    // nothing awaited before every channel is listened for: the source's channels are announced
    // once, right after the handshake (an awaited mkdir waits for libuv's thread pool, and under a
    // busy one the source's control channel came and went meanwhile)
    mkdirSync(dir, { mode: 0o700 });
    const store = new CacheStore(session, dir);
    const answer = session.openChannel(ChannelKind.CONTROL, 'restore-result');
    const lazyPagesReady = LazyPageStore.forSession(session, join(dir, 'lazy-pages.bin'));
    const lazyPages = await lazyPagesReady;
    this.options.onEvent?.({ kind: 'migration', id, dir });
    const commitWithinMs = this.options.commitWithinMs ?? DEFAULT_COMMIT_WITHIN_MS;
    const restoreBinary = this.options.criuBinary ? { binary: this.options.criuBinary } : {};
    const pidFile = join(dir, 'restored.pid');
    let tree: RestoredTree | undefined;
    let reported = false;
    try {
      await completeWhileArriving(store, this.options.idleMs ?? DEFAULT_IDLE_MS);
      const lazy = store.control.messages.some((message) => message.migration_start?.mode === 'lazy');
      if (!lazy) {
        // held stopped until the source says its own copy has ended: never two running copies
        await runCriu('restore', ['-D', dir, '-d', '--leave-stopped', '--pidfile', pidFile], { logFile: join(dir, 'restore.log'), ...restoreBinary });
        tree = await RestoredTree.fromPidFile(pidFile);
        if (!session.isOpen) throw new Error('the link to the source failed during the restore');
        // written with no connection, and none came before the session ended: it never left here
        const unsent = { detached: !session.attached, attachments: session.attachments };
        await sendControl(answer.writable, { restore_result: { ok: true, error: '', pid: tree.pid } });
        try {
          await store.control.next('commit', commitWithinMs);
        } catch (error) {
          if (unsent.detached && session.attachments === unsent.attachments) {
            throw new Error(`the link to the source failed before the restore could be reported (${error instanceof Error ? error.message : String(error)})`);
          }
          // the source may have ended its copy on our report, or resumed without it: keep this one
          // stopped, so that neither two copies run nor the last one is lost, and say so
          const reason = `the link failed after the restore was reported, before the source confirmed it ended its copy (${error instanceof Error ? error.message : String(error)}); pid ${tree.pid} is kept stopped: if the source process is gone, run it with kill -CONT, else kill it`;
          this.options.onEvent?.({ kind: 'in-doubt', id, pid: tree.pid, error: reason });
          return;
        }
        await tree.resume();
        this.options.onEvent?.({ kind: 'restored', id, pid: tree.pid });
        answer.writable.end();
        return;
      }
      // lazy: the restore starts before the memory is here; criu lazy-pages asks haul, haul asks the source
      let restoring: RestoredTree | undefined;
      const service = await startLazyPageService({ session, pages: lazyPages, dir, logFile: join(dir, 'lazy-pages.log'), ...(this.options.criuBinary ? { criuBinary: this.options.criuBinary } : {}), restored: () => restoring });
      const { guard } = service;
      try {
        await runCriu('restore', ['--lazy-pages', '-D', dir, '-d', '--pidfile', pidFile], { logFile: join(dir, 'restore.log'), cwd: dir, ...restoreBinary });
        tree = restoring = await RestoredTree.fromPidFile(pidFile);
      } catch (error) {
        // no restore will ever connect to it: the lazy-pages daemon would wait forever
        service.kill();
        await guard.release();
        throw error;
      }
      const restored = tree;
      session.once('aborted', (error) => lazyPages.fail(error));
      try {
        if (!session.isOpen) throw new Error('the link to the source failed during the restore');
        guard.matchLink();
        await sendControl(answer.writable, { restore_result: { ok: true, error: '', pid: tree.pid } });
        reported = true;
        this.options.onEvent?.({ kind: 'restored', id, pid: tree.pid });
        await service.delivered();
        guard.pagesComplete();
        // every page is here: the source ends its copy when it hears so, and commits
        const unsent = { detached: !session.attached, attachments: session.attachments };
        await sendControl(answer.writable, { lazy_complete: { pages: BigInt(lazyPages.received) } });
        try {
          await store.control.next('commit', commitWithinMs);
        } catch (error) {
          if (unsent.detached && session.attachments === unsent.attachments) throw error;
          const reason = `the link failed after every page arrived, before the source confirmed it ended its copy (${error instanceof Error ? error.message : String(error)}); pid ${tree.pid} is kept stopped: if the source process is gone, run it with kill -CONT, else kill it`;
          await guard.release();
          await restored.pause();
          this.options.onEvent?.({ kind: 'in-doubt', id, pid: tree.pid, error: reason });
          return;
        }
      } finally {
        await guard.release();
      }
      await restored.resume();
      answer.writable.end();
      this.options.onEvent?.({ kind: 'lazy-complete', id, pages: lazyPages.received });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      // restored but not confirmed: the source resumes, so this copy must not live on
      if (tree) await tree.kill().catch(() => {});
      this.options.onEvent?.({ kind: 'failed', id, error: reason });
      if (session.isOpen && reported) {
        session.abort(`lazy pages could not all be delivered, the restored copy was ended: ${reason}`);
      } else if (session.isOpen) {
        await sendControl(answer.writable, { restore_result: { ok: false, error: reason, pid: 0 } }).catch(() => {});
        answer.writable.end();
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
