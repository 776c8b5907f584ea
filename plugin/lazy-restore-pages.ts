import type { Incoming } from './destination-context.js';

/**
 * Starts `criu lazy-pages` for a lazy restore in `dir`, served by haul from the link. Resolves
 * once it listens; `delivered` settles when the daemon has delivered every page (their count: the
 * source has then heard that the migration is complete). If the link fails first, the daemon is
 * ended; `stop` ends it when no restore will come.
 */
export async function serveLazyRestore(entry: Incoming, dir: string): Promise<{ readonly delivered: Promise<number>; stop(): Promise<void> }> {
  const lazyPages = entry.lazyPages;
  // Incus shows a container the guard ended as stopped
  const service = await entry.migration.serveLazy({ restoreDir: dir, restored: () => entry.restored });
  const { guard } = service;
  entry.guard = guard;
  let stopped = false;
  const delivered = (async () => {
    try {
      return await entry.migration.lazyDelivered(service, async () => {
        await guard.release();
        await entry.restored?.resume(); // every page is here: whatever the link does, it runs
      });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      // stopped: the restore was refused, and the refusal says why
      if (entry.session.isOpen && !stopped) entry.session.abort(`lazy pages could not all be delivered: ${reason}`);
      throw error;
    } finally {
      await lazyPages.close().catch(() => {});
    }
  })();
  delivered.catch(() => {});
  // wrapped: a promise returned from an async function would be awaited
  return {
    delivered,
    async stop() {
      stopped = true;
      service.kill();
      await guard.release();
    },
  };
}
