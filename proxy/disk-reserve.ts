import { statfs } from 'node:fs/promises';

/** What a peer's migration leaves free on the destination's filesystem, at the least. */
export const DEFAULT_DISK_RESERVE_BYTES = 1024 ** 3;
const POLL_MS = 250;

/** The filesystem a migration writes to came down to its reserve: the migration stops there. */
export class DiskReserveError extends Error {
  override readonly name = 'DiskReserveError';
  readonly code = 'HAUL_DISK_RESERVE';
}

/** Looks again after this many bytes written by the store, not only every quarter second. */
const LOOK_EVERY_BYTES = 8 * 1024 ** 2;

export interface DiskReserveWatch {
  /** Bytes the store just wrote: a fast writer is looked at by how much it writes, not by the clock. */
  wrote(bytes: number): void;
  stop(): void;
}

/**
 * Calls `onBelow` once when the free space of the filesystem holding `dir` falls below
 * `reserveBytes`: looked at at once, then every quarter second, and after every 8 MiB the store
 * says it wrote. A peer is trusted within its migration's directory, not with the rest of the
 * host's disk, and the pages it sends are not counted ahead (a container's memory has no size the
 * destination could check them against). The clock covers every other writer of the directory
 * (the lazy-pages store) and whatever else fills the disk meanwhile. A filesystem that counts
 * data not yet flushed late (btrfs, zfs) may let up to its dirty data past the reserve.
 */
export function watchDiskReserve(dir: string, reserveBytes: number, onBelow: (error: DiskReserveError) => void): DiskReserveWatch {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let looking = false;
  let sinceLook = 0;
  const look = async (): Promise<void> => {
    if (looking || stopped) return;
    looking = true;
    clearTimeout(timer);
    const writtenBefore = sinceLook;
    const fs = await statfs(dir).catch(() => undefined); // gone: the migration is over
    looking = false;
    if (stopped || !fs) return;
    sinceLook -= writtenBefore;
    const free = fs.bavail * fs.bsize - sinceLook;
    if (free < reserveBytes) {
      stopped = true;
      return onBelow(new DiskReserveError(`the destination's filesystem at ${dir} has ${mib(free)} MiB free, below the ${mib(reserveBytes)} MiB it keeps for the rest of the host`));
    }
    timer = setTimeout(() => void look().catch(() => {}), POLL_MS);
    timer.unref();
  };
  void look().catch(() => {});
  return {
    wrote(bytes) {
      sinceLook += bytes;
      if (sinceLook >= LOOK_EVERY_BYTES) void look().catch(() => {});
    },
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

/**
 * Fails with a DiskReserveError unless `bytes` more fit on the filesystem holding `dir` with the
 * reserve still free: for a copy of what a migration stored onto another filesystem (Incus'
 * restore directory may be on a tmpfs: the host's memory).
 */
export async function ensureRoomFor(dir: string, bytes: number, reserveBytes = DEFAULT_DISK_RESERVE_BYTES): Promise<void> {
  const fs = await statfs(dir);
  const free = fs.bavail * fs.bsize;
  if (free - bytes < reserveBytes) {
    throw new DiskReserveError(`${mib(bytes)} MiB of images do not fit on the filesystem at ${dir}: it has ${mib(free)} MiB free and keeps ${mib(reserveBytes)} MiB for the rest of the host`);
  }
}

function mib(bytes: number): string {
  return (bytes / 1024 ** 2).toFixed(0);
}
