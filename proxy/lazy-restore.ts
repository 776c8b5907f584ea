import { criuVersion, headerLayoutFor, startLazyPagesDaemon, type CriuProcess, type CriuVersion, type RestoredTree } from '../src/criu/index.js';
import type { LinkSession } from '../src/link/index.js';
import { LazyCopyGuard } from './lazy-copy-guard.js';
import type { LazyPageStore } from './lazy-page-store.js';

/**
 * Where a lazy restore's missing pages come from on the destination: `criu lazy-pages` for the
 * images in its directory, served from the link (LazyPageStore), and the guard that keeps the
 * restored tree in step with the link until every page is here (LazyCopyGuard). Both restore
 * targets start it the same way: haul's own `criu restore` (image-cache.ts) and Incus' (the plugin).
 */
export interface LazyPageService {
  /** The running `criu lazy-pages`. */
  readonly daemon: CriuProcess;
  readonly guard: LazyCopyGuard;
  /** Resolves with the pages delivered once the daemon has served every page and ended; rejects if it failed. */
  delivered(): Promise<number>;
  /** Ends the daemon: no restore will use it, or the migration failed. */
  kill(): void;
}

export interface LazyPageServiceOptions {
  readonly session: LinkSession;
  readonly pages: LazyPageStore;
  /** The restore's image directory (its -D), where the daemon's socket for the restore lives too. */
  readonly dir: string;
  readonly logFile: string;
  /** The CRIU that restores, and its version (which sets the page-server header layout); read from it when not given. */
  readonly criuBinary?: string;
  readonly criuVersion?: CriuVersion;
  /** The restored tree, once known (before that, nothing to hold). */
  readonly restored: () => RestoredTree | undefined;
}

/** Starts the service and resolves once the daemon listens for the restore; ended again if it does not get there. */
export async function startLazyPageService(options: LazyPageServiceOptions): Promise<LazyPageService> {
  const binary = options.criuBinary ? { binary: options.criuBinary } : {};
  const layout = headerLayoutFor(options.criuVersion ?? (await criuVersion(options.criuBinary)));
  const { criu: daemon, served } = startLazyPagesDaemon(options.dir, options.pages, { layout, logFile: options.logFile, ...binary });
  const kill = (): void => void daemon.child.kill('SIGKILL');
  // the restored tree runs on pages still at the source: see LazyCopyGuard
  const guard = new LazyCopyGuard(options.session, options.restored, kill);
  try {
    await daemon.ready;
  } catch (error) {
    kill();
    await guard.release();
    throw error;
  }
  return {
    daemon,
    guard,
    kill,
    async delivered() {
      await daemon.exited;
      await served;
      options.pages.allServed();
      return options.pages.received;
    },
  };
}
