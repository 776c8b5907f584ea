import { statfs } from 'node:fs/promises';

/** What a peer's migration leaves free on the destination's filesystem, at the least. */
export const DEFAULT_DISK_RESERVE_BYTES = 1024 ** 3;
const POLL_MS = 250;

/** The filesystem a migration writes to came down to its reserve: the migration stops there. */
export class DiskReserveError extends Error {
  override readonly name = 'DiskReserveError';
  readonly code = 'HAUL_DISK_RESERVE';
}

/**
 * Calls `onBelow` once when the free space of the filesystem holding `dir` falls below
 * `reserveBytes` (looked at at once, then every quarter second): a peer is trusted within its
 * migration's directory, not with the rest of the host's disk, and the pages it sends are not
 * counted ahead (a container's memory has no size the destination could check them against).
 * A poll and not a count of bytes written: every writer of the directory is covered (pages,
 * images, the lazy-pages store, the disk changes), and so is whatever else fills the disk meanwhile.
 */
export function watchDiskReserve(dir: string, reserveBytes: number, onBelow: (error: DiskReserveError) => void): { stop(): void } {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const look = async (): Promise<void> => {
    const fs = await statfs(dir).catch(() => undefined); // gone: the migration is over
    if (stopped || !fs) return;
    const free = fs.bavail * fs.bsize;
    if (free < reserveBytes) {
      stopped = true;
      return onBelow(new DiskReserveError(`the destination's filesystem at ${dir} has ${mib(free)} MiB free, below the ${mib(reserveBytes)} MiB it keeps for the rest of the host`));
    }
    timer = setTimeout(() => void look().catch(() => {}), POLL_MS);
    timer.unref();
  };
  void look().catch(() => {});
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

function mib(bytes: number): string {
  return (bytes / 1024 ** 2).toFixed(0);
}
