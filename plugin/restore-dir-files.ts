import { constants, createReadStream, type Stats } from 'node:fs';
import { link, lstat, open, readdir, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { isNetnsImageName, netnsImageForEveryCriu, readNetnsImage } from '../src/criu/index.js';
import { ensureRoomFor } from '../proxy/index.js';

/**
 * What haul reads and writes in Incus' restore directory. The source's rsync filled it, so any name
 * there may be a link the source (or a container there) planted, pointing anywhere on this host:
 * haul never follows one. A name it writes is unlinked first and made anew with O_CREAT | O_EXCL |
 * O_NOFOLLOW (link(2) and rename(2) never follow their new name either), and modes are set through
 * the descriptor (fchmod), never by path.
 */

const { O_CREAT, O_EXCL, O_NOFOLLOW, O_RDONLY, O_WRONLY } = constants;

/** A file haul found in the restore dir that is not a plain file (a link, a FIFO, a directory...). */
export class NotAPlainFileError extends Error {
  override readonly name = 'NotAPlainFileError';
  readonly code = 'HAUL_NOT_A_PLAIN_FILE';

  constructor(readonly path: string, cause?: unknown) {
    super(`${path} is not a plain file (a link planted there?): haul does not follow it`, cause === undefined ? {} : { cause });
  }
}

/**
 * A plain file in the restore dir, opened for reading and checked to be one, with what fstat says of
 * it; undefined if there is none; NotAPlainFileError if the name is a link or anything else.
 */
async function openPlainFile(path: string): Promise<{ readonly file: FileHandle; readonly stats: Stats } | undefined> {
  let file: FileHandle;
  try {
    // O_NONBLOCK: a FIFO planted there must not hold the restore waiting for a writer
    file = await open(path, O_RDONLY | O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if ((error as NodeJS.ErrnoException).code === 'ELOOP') throw new NotAPlainFileError(path, error);
    throw error;
  }
  try {
    const stats = await file.stat();
    if (!stats.isFile()) throw new NotAPlainFileError(path);
    return { file, stats };
  } catch (error) {
    await file.close();
    throw error;
  }
}

/** The text of a plain file in the restore dir; undefined if there is none; NotAPlainFileError if the name is a link or anything else. */
export async function readPlainFile(path: string): Promise<string | undefined> {
  const opened = await openPlainFile(path);
  if (!opened) return undefined;
  try {
    return await opened.file.readFile('utf8');
  } finally {
    await opened.file.close();
  }
}

async function removeName(path: string): Promise<void> {
  try {
    await unlink(path); // a link goes, not what it points to
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}

async function writeAll(file: FileHandle, bytes: Buffer): Promise<void> {
  for (let at = 0; at < bytes.length; ) at += (await file.write(bytes, at)).bytesWritten;
}

async function copyInto(file: FileHandle, from: string): Promise<void> {
  for await (const chunk of createReadStream(from) as AsyncIterable<Buffer>) await writeAll(file, chunk);
}

/**
 * Puts each of `names` from haul's own `fromDir` into `restoreDir`, owned by `owner` with `mode`
 * (the restored tasks read them as the container's root; no one else may: they hold its memory): a
 * hard link where both are on one filesystem, else a copy. Whatever was at those names in the
 * restore dir goes first.
 */
export async function placeImageFiles(fromDir: string, restoreDir: string, names: readonly string[], owner: { readonly uid: number; readonly gid: number }, mode = 0o640): Promise<void> {
  const [source, target] = await Promise.all([lstat(fromDir), lstat(restoreDir)]);
  if (source.dev !== target.dev) {
    // copies, not links: they must leave the other filesystem its reserve
    let bytes = 0;
    for (const name of names) bytes += (await lstat(join(fromDir, name))).size;
    await ensureRoomFor(restoreDir, bytes);
  }
  for (const name of names) {
    const from = join(fromDir, name);
    const to = join(restoreDir, name);
    await removeName(to);
    let placed: FileHandle;
    try {
      await link(from, to);
      placed = await open(to, O_RDONLY | O_NOFOLLOW);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EXDEV') throw error;
      placed = await open(to, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
      try {
        await copyInto(placed, from);
      } catch (copyError) {
        await placed.close();
        throw copyError;
      }
    }
    try {
      await placed.chown(owner.uid, owner.gid);
      await placed.chmod(mode);
    } finally {
      await placed.close();
    }
  }
}

/**
 * Every netns-<id>.img Incus' rsync put into `restoreDir`, in the form every CRIU restores
 * (src/criu/images/netns.ts: a source's CRIU 4.2 writes one that CRIU 4.1 fails on), owned and
 * moded as it was. Resolves how many were rewritten; one that is not a plain file, or far too
 * large for what it is, fails the restore.
 */
export async function netnsImagesForEveryCriu(restoreDir: string): Promise<number> {
  let rewritten = 0;
  for (const name of (await readdir(restoreDir)).filter(isNetnsImageName)) {
    const path = join(restoreDir, name);
    const opened = await openPlainFile(path);
    if (!opened) continue; // gone since the listing
    const { file, stats } = opened;
    let image: Buffer;
    try {
      image = await readNetnsImage(file, stats.size, path);
    } finally {
      await file.close();
    }
    const replacement = await netnsImageForEveryCriu(image, path);
    if (!replacement) continue;
    await removeName(path);
    const written = await open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
    try {
      await writeAll(written, replacement);
      await written.chown(stats.uid, stats.gid);
      await written.chmod(stats.mode & 0o777);
    } finally {
      await written.close();
    }
    rewritten++;
  }
  return rewritten;
}

/**
 * Makes the restore dir searchable by group 0 and by no one else, through its descriptor (a link
 * in its place is not followed), and says who owns it: undefined when `dir` is not a directory.
 *
 * Incus makes it 0700 for the container's root; CRIU's restored init may open timens-N.img before
 * its uid map is written (criu/cr-restore.c: prepare_timens() runs before the PREPARE_NAMESPACES
 * stage), as host uid 0 and gid 0 without capabilities over the host's files, and then cannot
 * search it. About one restore in six failed so here, natively (a stateful start, a move) as
 * through haul; group 0 is root's, and the pages in the dir are the container's memory.
 */
export async function makeSearchableByRoot(dir: string): Promise<{ readonly uid: number } | undefined> {
  let handle: FileHandle;
  try {
    handle = await open(dir, O_RDONLY | O_NOFOLLOW | constants.O_DIRECTORY);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR' || code === 'ELOOP' || code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const { uid } = await handle.stat();
    await handle.chown(uid, 0);
    await handle.chmod(0o710);
    return { uid };
  } finally {
    await handle.close();
  }
}
