import { createReadStream, type Stats } from 'node:fs';
import { lstat, readdir, readlink, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';

/** The pax record a directory entry carries its complete list of names in (JSON), for deletions. */
export const DIRECTORY_NAMES_PAX = 'HAUL.names';


export interface DiskChangesPacked {
  readonly files: number;
  readonly directories: number;
  readonly symlinks: number;
  /** Content bytes of the files sent. */
  readonly bytes: number;
  /** Changed entries a tar cannot recreate here (device nodes, fifos, sockets), by path. */
  readonly skipped: readonly string[];
}

/**
 * Packs what changed in the filesystem under `root` since `sinceMs` (by ctime, which a process
 * cannot set back) as a tar stream, for a copy of that filesystem taken at `sinceMs` or later:
 * every file, symlink and directory whose inode changed, each directory with the full list of its
 * names so the other side can remove what was deleted. A rename changes the renamed inode's ctime
 * (btrfs, zfs, ext4), so renamed entries are sent again under their new name.
 *
 * Only `root`'s own filesystem is walked: mount points (proc, sysfs, a tmpfs /dev) keep their name
 * in the listing but nothing below them is sent. Symlinks are never followed. The tree must not
 * change meanwhile (the container is frozen). Hard links arrive as separate files; extended
 * attributes are not carried.
 */
export function packDiskChanges(root: string, sinceMs: number): { readonly tar: Readable; readonly done: Promise<DiskChangesPacked> } {
  const pack = tar.pack();
  const counts = { files: 0, directories: 0, symlinks: 0, bytes: 0 };
  const skipped: string[] = [];
  const changed = (info: Stats): boolean => info.ctimeMs >= sinceMs;
  // ustar's uid and gid fields stop at 0o777777, below a shifted container's ids (1000000 and up):
  // pax records carry the real ones
  const owner = (info: Stats, pax: Record<string, string> = {}) => ({
    uid: info.uid, gid: info.gid, mode: info.mode & 0o7777, mtime: info.mtime,
    pax: { ...pax, uid: String(info.uid), gid: String(info.gid) },
  });

  const walk = async (relative: string, info: Stats, device: number): Promise<void> => {
    const path = relative === '.' ? root : `${root}/${relative}`;
    const names = (await readdir(path)).sort();
    if (changed(info)) {
      await addEntry(pack, { name: relative, type: 'directory', ...owner(info, { [DIRECTORY_NAMES_PAX]: JSON.stringify(names) }) });
      counts.directories++;
    }
    for (const name of names) {
      const childRelative = relative === '.' ? name : `${relative}/${name}`;
      const childPath = `${path}/${name}`;
      const child = await lstat(childPath);
      if (child.dev !== device) continue; // another filesystem mounted here
      if (child.isDirectory()) {
        await walk(childRelative, child, device);
      } else if (!changed(child)) {
        continue;
      } else if (child.isFile()) {
        const entry = pack.entry({ name: childRelative, type: 'file', size: child.size, ...owner(child) });
        await pipeline(createReadStream(childPath), entry as unknown as NodeJS.WritableStream);
        counts.files++;
        counts.bytes += child.size;
      } else if (child.isSymbolicLink()) {
        await addEntry(pack, { name: childRelative, type: 'symlink', linkname: await readlink(childPath), ...owner(child) });
        counts.symlinks++;
      } else {
        skipped.push(childRelative);
      }
    }
  };

  const done = (async () => {
    try {
      const top = await stat(root); // follows /proc/PID/root to the container's root
      await walk('.', top, top.dev);
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

function addEntry(pack: tar.Pack, header: Partial<tar.Header> & { name: string }): Promise<void> {
  return new Promise((resolve, reject) => void pack.entry(header, (error) => (error ? reject(error) : resolve())));
}
