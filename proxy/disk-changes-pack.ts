import { constants, lstatSync, opendirSync, type Stats } from 'node:fs';
import { type FileHandle, open, readlink, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import tar from 'tar-stream';
import { asUtf8, type DataSegment, DEFAULT_MAX_DISK_CHANGES_BYTES, DISK_PAX, DiskChangesError, encodeNames, encodeSparseMap } from './disk-changes-format.js';

export interface DiskChangesPacked {
  readonly files: number;
  readonly directories: number;
  readonly symlinks: number;
  /** Content bytes of the files sent (a sparse file's data segments only). */
  readonly bytes: number;
  /** Changed entries a tar cannot recreate here (device nodes, fifos, sockets), by path. */
  readonly skipped: readonly string[];
}

export interface PackDiskChangesOptions {
  /** Bytes of tar past which the pack fails (DiskChangesError HAUL_DISK_CHANGES_TOO_LARGE). */
  readonly maxBytes?: number;
  /**
   * The mount points under `root`, as paths inside it (src/host mountPointsOf): named in their
   * directory's list, never looked at. Another filesystem mounted in the container (an Incus disk
   * device, a network share) may hang on a look, and the walk looks synchronously.
   */
  readonly mountPoints?: readonly Buffer[];
}

/** The unit holes are found in: a page, the block size of btrfs, ext4 and zfs' default recordsize's smallest. */
const HOLE_BLOCK = 4096;
const READ_CHUNK = 1024 * 1024;
const ZEROES = Buffer.alloc(READ_CHUNK);
const SLASH = Buffer.from('/');
/**
 * Entries looked at between two turns of the event loop. Every entry's inode is looked at while the
 * container is frozen, so the walk is inside the downtime: an lstat or readdir through the thread
 * pool took about 40 µs (a Debian minbase root, 6665 entries: 250-320 ms); a synchronous one takes
 * a few, and turns in between keep the agent answering its other links and Incus.
 */
const ENTRIES_PER_TURN = 512;

/**
 * Packs what changed in the filesystem under `root` since `sinceMs` (by ctime, which a process
 * cannot set back) as a tar stream, for a copy of that filesystem taken at `sinceMs` or later:
 * every file, symlink and directory whose inode changed, each directory followed by the full list
 * of its names (an entry of its own, DISK_PAX.names) so the other side can remove what was
 * deleted. A rename changes the renamed inode's ctime (btrfs, zfs, ext4), so renamed entries are
 * sent again under their new name.
 *
 * Names are read as bytes: those that are not UTF-8 travel as base64 in DISK_PAX.path/linkpath.
 * A file with fewer blocks than its size is read for runs of zero blocks, which travel as holes
 * (DISK_PAX.sparse). Past `maxBytes` of tar the pack fails, before the entry that would pass it.
 *
 * Only `root`'s own filesystem is walked: mount points (proc, sysfs, a tmpfs /dev) keep their name
 * in the listing but nothing below them is sent. Symlinks are never followed. The tree must not
 * change meanwhile (the container is frozen). Hard links arrive as separate files; extended
 * attributes are not carried.
 */
export function packDiskChanges(root: string, sinceMs: number, options: PackDiskChangesOptions = {}): { readonly tar: Readable; readonly done: Promise<DiskChangesPacked> } {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_DISK_CHANGES_BYTES;
  const pack = tar.pack();
  const counts = { files: 0, directories: 0, symlinks: 0, bytes: 0 };
  const skipped: string[] = [];
  let plannedBytes = 1024; // the two zero blocks that end a tar
  const changed = (info: Stats): boolean => info.ctimeMs >= sinceMs;
  const rootBytes = Buffer.from(root);
  const pathOf = (relative: Buffer | undefined): Buffer => (relative ? Buffer.concat([rootBytes, SLASH, relative]) : rootBytes);

  /** The tar header for `relative` (undefined: the root), with its owner and mode as pax records. */
  const headerFor = (relative: Buffer | undefined, info: Stats | undefined, pax: Record<string, string> = {}): tar.Header & { name: string } => {
    const text = relative ? asUtf8(relative) : '.';
    const records: Record<string, string> = { ...pax };
    // shown to people only: the applier takes the bytes
    if (text === undefined && relative) records[DISK_PAX.path] = relative.toString('base64');
    // ustar's uid and gid fields stop at 0o777777, below a shifted container's ids (1000000 and up):
    // pax records carry the real ones
    if (info) Object.assign(records, { uid: String(info.uid), gid: String(info.gid), [DISK_PAX.mode]: (info.mode & 0o7777).toString(8) });
    return {
      name: text ?? (relative ?? Buffer.alloc(0)).toString('utf8'), type: 'file', size: 0, linkname: '', uname: '', gname: '', devmajor: 0, devminor: 0,
      uid: info?.uid ?? 0, gid: info?.gid ?? 0, mode: (info?.mode ?? 0o600) & 0o7777, mtime: info?.mtime ?? new Date(0), pax: records,
    };
  };

  /** Counts an entry's bytes of tar before it is added (header, pax header, content, each in 512-byte blocks, rounded up). */
  const plan = (header: tar.Header & { name: string }, contentBytes: number, shown: string): void => {
    const records = Object.entries({ ...(header.pax as Record<string, string>), path: header.name, linkpath: header.linkname });
    const paxBytes = records.reduce((sum, [key, value]) => sum + Buffer.byteLength(key) + Buffer.byteLength(value) + 24, 0);
    plannedBytes += 1024 + roundUp512(paxBytes) + roundUp512(contentBytes);
    if (plannedBytes > maxBytes) throw new DiskChangesError('HAUL_DISK_CHANGES_TOO_LARGE', `the changes pass the cap of ${maxBytes} bytes at ${JSON.stringify(shown)}`);
  };

  const addFile = async (relative: Buffer, info: Stats): Promise<void> => {
    const file = await open(pathOf(relative), constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      // fewer blocks than the size: holes, or compression (zfs counts compressed blocks): look for zero runs
      const segments = info.blocks * 512 < info.size ? await dataSegments(file, info.size) : info.size > 0 ? [{ offset: 0, length: info.size }] : [];
      const dense = info.size === 0 || (segments.length === 1 && segments[0]?.length === info.size);
      const map = dense ? Buffer.alloc(0) : encodeSparseMap(segments);
      const dataBytes = segments.reduce((sum, { length }) => sum + length, 0);
      const header = headerFor(relative, info, dense ? {} : { [DISK_PAX.sparse]: `${info.size} ${segments.length}` });
      plan(header, map.length + dataBytes, header.name);
      const entry = pack.entry({ ...header, size: map.length + dataBytes });
      await pipeline(Readable.from(fileContent(file, map, segments)), entry as unknown as NodeJS.WritableStream);
      counts.files++;
      counts.bytes += dataBytes;
    } finally {
      await file.close();
    }
  };

  // as latin1 strings, which map bytes one to one
  const mountPoints = new Set((options.mountPoints ?? []).map((point) => point.toString('latin1').replace(/^\/+/, '')).filter((point) => point !== ''));
  let lookedAt = 0;
  const lookedAtOne = async (): Promise<void> => {
    if (++lookedAt % ENTRIES_PER_TURN === 0) await nextTurn();
  };
  /** A directory's names, read a batch at a time with turns in between: a directory can hold millions. */
  const namesIn = async (path: Buffer): Promise<Buffer[]> => {
    const names: Buffer[] = [];
    // node's Dir takes 'buffer' as readdir does (its names come as Buffers), which @types/node leaves out
    const dir = opendirSync(path, { encoding: 'buffer' as BufferEncoding, bufferSize: 128 });
    try {
      for (let entry; (entry = dir.readSync()) !== null;) {
        names.push(entry.name as unknown as Buffer);
        await lookedAtOne();
      }
    } finally {
      dir.closeSync();
    }
    return names.sort(Buffer.compare);
  };
  const walk = async (relative: Buffer | undefined, info: Stats, device: number): Promise<void> => {
    const path = pathOf(relative);
    const names = await namesIn(path);
    if (changed(info)) {
      const header = headerFor(relative, info);
      plan(header, 0, header.name);
      await addEntry(pack, { ...header, type: 'directory' });
      const list = encodeNames(names);
      const listHeader = headerFor(relative, undefined, { [DISK_PAX.names]: String(names.length) });
      plan(listHeader, list.length, header.name);
      await addEntry(pack, listHeader, list);
      counts.directories++;
    }
    for (const name of names) {
      const childRelative = relative ? Buffer.concat([relative, SLASH, name]) : name;
      if (mountPoints.has(childRelative.toString('latin1'))) continue; // another filesystem, or another view of one
      await lookedAtOne();
      const child = lstatSync(pathOf(childRelative));
      if (child.dev !== device) continue; // another filesystem mounted here
      if (child.isDirectory()) {
        await walk(childRelative, child, device);
      } else if (!changed(child)) {
        continue;
      } else if (child.isFile()) {
        await addFile(childRelative, child);
      } else if (child.isSymbolicLink()) {
        const target = await readlink(pathOf(childRelative), { encoding: 'buffer' });
        const text = asUtf8(target);
        const header = headerFor(childRelative, child, text === undefined ? { [DISK_PAX.linkpath]: target.toString('base64') } : {});
        const entry = { ...header, type: 'symlink' as const, linkname: text ?? target.toString('utf8') };
        plan(entry, 0, header.name);
        await addEntry(pack, entry);
        counts.symlinks++;
      } else {
        skipped.push(childRelative.toString('utf8'));
      }
    }
  };

  const done = (async () => {
    try {
      const top = await stat(root); // follows /proc/PID/root to the container's root
      await walk(undefined, top, top.dev);
      const end = headerFor(undefined, undefined, { [DISK_PAX.end]: '1' });
      plan(end, 0, 'the end');
      await addEntry(pack, end, Buffer.alloc(0)); // a file entry without content waits for it
      pack.finalize();
      return { ...counts, skipped };
    } catch (error) {
      pack.destroy(error as Error);
      throw error;
    }
  })();
  done.catch(() => {});
  // tar-stream's streams are streamx ones: hand out a Node stream
  return { tar: Readable.from(pack, { objectMode: false }), done };
}

/**
 * The data segments of a file of `size` bytes: what is left when runs of all-zero HOLE_BLOCKs are
 * taken out. Node has no lseek SEEK_DATA/SEEK_HOLE, so holes are read: no disk read, but the
 * kernel still fills pages with zeroes (about 4 ms a MiB on the 2-core test VM, so a 512 MiB sparse
 * file adds 2 s to the freeze). Zero blocks written as data become holes too: same content.
 */
async function dataSegments(file: FileHandle, size: number): Promise<DataSegment[]> {
  const segments: DataSegment[] = [];
  let start = -1; // where the data segment being read began
  const buffer = Buffer.alloc(READ_CHUNK);
  for (let position = 0; position < size; position += READ_CHUNK) {
    const wanted = Math.min(READ_CHUNK, size - position);
    const { bytesRead } = await file.read(buffer, 0, wanted, position);
    if (bytesRead !== wanted) throw new Error(`a file shrank while it was packed (${bytesRead} of ${wanted} bytes at ${position})`);
    const allZero = buffer.subarray(0, wanted).equals(ZEROES.subarray(0, wanted));
    for (let block = 0; block < wanted; block += HOLE_BLOCK) {
      const length = Math.min(HOLE_BLOCK, wanted - block);
      const zero = allZero || buffer.subarray(block, block + length).equals(ZEROES.subarray(0, length));
      if (!zero && start < 0) start = position + block;
      if (zero && start >= 0) {
        segments.push({ offset: start, length: position + block - start });
        start = -1;
      }
      if (allZero) break;
    }
  }
  if (start >= 0) segments.push({ offset: start, length: size - start });
  return segments;
}

/** A file entry's content: the map (empty for a dense file), then each segment's bytes. */
async function* fileContent(file: FileHandle, map: Buffer, segments: readonly DataSegment[]): AsyncGenerator<Buffer> {
  if (map.length > 0) yield map;
  for (const { offset, length } of segments) {
    for (let done = 0; done < length;) {
      const wanted = Math.min(READ_CHUNK, length - done);
      const chunk = Buffer.allocUnsafe(wanted);
      const { bytesRead } = await file.read(chunk, 0, wanted, offset + done);
      if (bytesRead !== wanted) throw new Error(`a file shrank while it was packed (${bytesRead} of ${wanted} bytes at ${offset + done})`);
      yield chunk;
      done += wanted;
    }
  }
}

function roundUp512(bytes: number): number {
  return Math.ceil(bytes / 512) * 512;
}

function addEntry(pack: tar.Pack, header: Partial<tar.Header> & { name: string }, content?: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (error?: Error | null): void => (error ? reject(error) : resolve());
    if (content) pack.entry(header, content, settle);
    else pack.entry(header, settle);
  });
}
