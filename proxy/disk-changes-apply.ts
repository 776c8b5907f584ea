import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { type FileHandle, lchown, lstat, lutimes, mkdir, open, readdir, rename, rmdir, symlink, unlink } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import {
  bytesOfBase64, type DataSegment, decodeNames, decodeSparseMap, DEFAULT_MAX_DISK_CHANGES_BYTES, DISK_PAX, DiskChangesError, entryPathComponents, MAX_NAMES_BYTES, parseSparseRecord,
} from './disk-changes-format.js';

export { DiskChangesError } from './disk-changes-format.js';

export interface DiskChangesApplied {
  readonly files: number;
  readonly directories: number;
  readonly symlinks: number;
  /** Entries removed because their directory's list no longer names them. */
  readonly removed: number;
  /**
   * Other filesystems (mounts, nested btrfs subvolumes) under names the lists no longer have: left
   * in place, with the directories above them, rather than emptied.
   */
  readonly notRemoved: readonly string[];
  readonly bytes: number;
}

export interface ApplyDiskChangesOptions {
  /** Bytes of tar past which the apply stops (DiskChangesError HAUL_DISK_CHANGES_TOO_LARGE). */
  readonly maxBytes?: number;
  /**
   * The host ids files may be owned by (HAUL_DISK_CHANGES_BAD_OWNER for any other). An
   * unprivileged container can only ever own files within its id map; a tar from one that gives a
   * file to host uid 0, setuid, would plant a root program on this host. Unset: any id (a
   * privileged container's root is the host's).
   */
  readonly owners?: OwnerIds;
}

/** Ranges of host ids, `[first, first + count)`. */
export interface OwnerIds {
  readonly uids: ReadonlyArray<{ readonly first: number; readonly count: number }>;
  readonly gids: ReadonlyArray<{ readonly first: number; readonly count: number }>;
}

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_DIRECTORY, O_NOFOLLOW } = constants;
const OPEN_DIRECTORY = O_RDONLY | O_DIRECTORY | O_NOFOLLOW;
const CREATE_FILE = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW;

/**
 * Applies a tar of disk changes (packDiskChanges) onto the filesystem at `root`: files and symlinks
 * replace what was there (written aside, then renamed in), directories get their owner, mode and
 * time, and lose the names their source no longer has.
 *
 * The tar is the container's word. Its names must pass the grammar (entryPathComponents) and no
 * link is ever followed: each entry walks from `root` again, one component at a time, opening each
 * directory with O_NOFOLLOW | O_DIRECTORY relative to the one before (through /proc/self/fd, which
 * resolves to the open directory itself). An entry that made a directory into a symlink thus fails
 * every later entry below it, instead of redirecting it; nothing checked once is trusted later.
 * Owners, modes and times are set on open descriptors or with the l- calls.
 *
 * The first refused entry (or the byte cap, or a tar that ends before the packer's end entry) ends
 * the apply: entries before it stay applied, none after it is written, and no file is left
 * half-written under its name (files are renamed in whole).
 */
export async function applyDiskChanges(source: Readable, root: string, options: ApplyDiskChangesOptions = {}): Promise<DiskChangesApplied> {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_DISK_CHANGES_BYTES;
  // `root` is ours (where liblxc mounted the container's root): the one path followed
  const rootDirectory = await open(root, O_RDONLY | O_DIRECTORY);
  try {
    const applier = new Applier(rootDirectory, (await rootDirectory.stat()).dev, options.owners);
    const extract = tar.extract();
    // its async iterator listens for entries from its creation on: no await between the two
    const entries = extract[Symbol.asyncIterator]();
    const feeding = pipeline(source, extract as unknown as NodeJS.WritableStream);
    feeding.catch(() => {});
    try {
      for await (const entry of { [Symbol.asyncIterator]: () => entries }) {
        if (entry.offset + 512 + entry.header.size > maxBytes) {
          throw new DiskChangesError('HAUL_DISK_CHANGES_TOO_LARGE', `the changes pass the cap of ${maxBytes} bytes at ${JSON.stringify(entry.header.name)}`);
        }
        await applier.apply(entry as unknown as Entry);
      }
      if (!applier.ended) throw new DiskChangesError('HAUL_DISK_CHANGES_INCOMPLETE', 'the tar ends before the packer\'s end entry: it was cut short');
      await feeding;
      await applier.setDirectoryTimes();
      return applier.result();
    } catch (error) {
      extract.destroy();
      source.destroy();
      if (error instanceof DiskChangesError) throw error;
      // tar-stream's own refusals (a corrupt or cut header) and this host's file system errors:
      // one code for callers, the real error kept as the cause
      throw new DiskChangesError('HAUL_DISK_CHANGES_FAILED', `could not apply the changes: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    }
  } finally {
    await rootDirectory.close();
  }
}

type Entry = AsyncIterable<Buffer> & { readonly header: tar.Header; resume(): unknown };

class Applier {
  private readonly counts = { files: 0, directories: 0, symlinks: 0, removed: 0, bytes: 0 };
  private readonly notRemoved: string[] = [];
  /** The packer's end entry came (DISK_PAX.end): nothing may follow it. */
  ended = false;
  /** Set last, deepest first: writing into a directory changes its time. */
  private readonly directoryTimes: Array<{ readonly components: readonly Buffer[]; readonly mtime: Date }> = [];

  /** `device`: the root's filesystem, the only one written (the packer sends nothing from others). */
  constructor(private readonly root: FileHandle, private readonly device: number, private readonly owners: OwnerIds | undefined) {}

  result(): DiskChangesApplied {
    return { ...this.counts, notRemoved: [...this.notRemoved] };
  }

  async apply(entry: Entry): Promise<void> {
    const { header } = entry;
    const pax = (header.pax ?? {}) as Record<string, string>;
    if (this.ended) throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_ENTRY', `${JSON.stringify(header.name)} comes after the end entry`);
    if (pax[DISK_PAX.end] !== undefined) {
      if (header.type !== 'file' || header.size !== 0) throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_ENTRY', 'the end entry is not an empty file entry');
      entry.resume();
      this.ended = true;
      return;
    }
    const encodedPath = pax[DISK_PAX.path];
    const name = encodedPath === undefined ? Buffer.from(header.name, 'utf8') : bytesOfBase64(encodedPath, 'the path record');
    const components = entryPathComponents(name, header.type === 'directory');
    const isNames = header.type === 'file' && pax[DISK_PAX.names] !== undefined;
    if (components.length === 0 && header.type !== 'directory' && !isNames) {
      throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_ENTRY', `the root \`.\` comes as a ${header.type}; it can only be a directory`);
    }
    const attributes = { uid: ownerId(pax['uid'], header.uid), gid: ownerId(pax['gid'], header.gid), mode: modeOf(pax[DISK_PAX.mode], header.mode), mtime: header.mtime };
    // a directory's list of names makes nothing, and carries no owner
    if (this.owners && !isNames && !(within(this.owners.uids, attributes.uid) && within(this.owners.gids, attributes.gid))) {
      throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_OWNER', `${JSON.stringify(header.name)} is owned by ${attributes.uid}:${attributes.gid}, outside the ids the container's root may give its files`);
    }
    switch (header.type) {
      case 'directory':
        entry.resume();
        await this.directory(components, attributes);
        return;
      case 'file': {
        const names = pax[DISK_PAX.names];
        if (isNames && names !== undefined) await this.removeUnlisted(components, names, entry, header.size);
        else await this.file(components, attributes, entry, new FileLayout(pax[DISK_PAX.sparse], header.size));
        return;
      }
      case 'symlink': {
        entry.resume();
        const encodedTarget = pax[DISK_PAX.linkpath];
        const target = encodedTarget === undefined ? Buffer.from(header.linkname ?? '', 'utf8') : bytesOfBase64(encodedTarget, 'the link target record');
        if (target.length === 0 || target.includes(0)) throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_ENTRY', `the symlink ${JSON.stringify(header.name)} has an empty target or one with a NUL`);
        await this.symlink(components, attributes, target);
        return;
      }
      default:
        entry.resume();
        throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_ENTRY', `cannot apply ${JSON.stringify(header.name)} of type ${header.type}`);
    }
  }

  private async directory(components: readonly Buffer[], attributes: Attributes): Promise<void> {
    if (components.length > 0) await this.inParent(components, async (parent, leaf) => {
      const path = inside(parent, leaf);
      const existing = await lstat(path).catch(() => undefined);
      if (existing && !existing.isDirectory()) await unlink(path);
      if (!existing?.isDirectory()) await mkdir(path, { mode: 0o700 });
    });
    await this.inDirectory(components, async (directory) => {
      await directory.chown(attributes.uid, attributes.gid);
      await directory.chmod(attributes.mode);
    });
    this.directoryTimes.push({ components, mtime: attributes.mtime });
    this.counts.directories++;
  }

  /** A directory's list of names (DISK_PAX.names): what the directory holds beyond it goes. */
  private async removeUnlisted(components: readonly Buffer[], count: string, entry: Entry, size: number): Promise<void> {
    if (size > MAX_NAMES_BYTES) throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_ENTRY', `a list of names of ${size} bytes is more than this side holds (${MAX_NAMES_BYTES})`);
    const chunks: Buffer[] = [];
    for await (const chunk of entry) chunks.push(chunk);
    const keep = new Set(decodeNames(Buffer.concat(chunks), count).map((name) => name.toString('latin1')));
    await this.inDirectory(components, async (directory) => {
      for (const name of await readdir(`/proc/self/fd/${directory.fd}`, { encoding: 'buffer' })) {
        if (keep.has(name.toString('latin1'))) continue;
        const whole = await removeTree(inside(directory, name), joined([...components, name]), this.device, (kept) => this.notRemoved.push(kept.toString('utf8')));
        if (whole) this.counts.removed++;
      }
    });
  }

  private async file(components: readonly Buffer[], attributes: Attributes, entry: Entry, layout: FileLayout): Promise<void> {
    await this.inParent(components, async (parent, leaf) => {
      const aside = inside(parent, asideName());
      const file = await open(aside, CREATE_FILE, 0o600);
      try {
        for await (const chunk of entry) await layout.write(chunk, file);
        await file.truncate(layout.size); // the holes at its end
        await file.chown(attributes.uid, attributes.gid);
        await file.chmod(attributes.mode); // after chown, which clears set-id bits
        await file.utimes(attributes.mtime, attributes.mtime);
        await file.close();
        await this.replaceWith(aside, parent, leaf, components);
        this.counts.bytes += layout.dataBytes;
      } catch (error) {
        await file.close().catch(() => {});
        await unlink(aside).catch(() => {});
        throw error;
      }
    });
    this.counts.files++;
  }

  private async symlink(components: readonly Buffer[], attributes: Attributes, target: Buffer): Promise<void> {
    await this.inParent(components, async (parent, leaf) => {
      const aside = inside(parent, asideName());
      await symlink(target, aside);
      try {
        await lchown(aside, attributes.uid, attributes.gid);
        await lutimes(aside, attributes.mtime, attributes.mtime);
        await this.replaceWith(aside, parent, leaf, components);
      } catch (error) {
        await unlink(aside).catch(() => {});
        throw error;
      }
    });
    this.counts.symlinks++;
  }

  /** Renames `aside` (in `parent`) over the entry's name there, a directory there removed first. */
  private async replaceWith(aside: Buffer, parent: FileHandle, leaf: Buffer, components: readonly Buffer[]): Promise<void> {
    const path = inside(parent, leaf);
    const existing = await lstat(path).catch(() => undefined);
    if (existing?.isDirectory() && !(await removeTree(path, joined(components), this.device, () => {}))) {
      throw new DiskChangesError('HAUL_DISK_CHANGES_OTHER_FILESYSTEM', `${JSON.stringify(joined(components).toString('utf8'))} holds another filesystem: it cannot be replaced`);
    }
    await rename(aside, path);
  }

  /** Each directory an entry named gets its time, if a later entry left it a directory. */
  async setDirectoryTimes(): Promise<void> {
    for (const { components, mtime } of this.directoryTimes.reverse()) {
      await this.inDirectory(components, (directory) => directory.utimes(mtime, mtime)).catch((error: unknown) => {
        if (!(error instanceof DiskChangesError && error.code === 'HAUL_DISK_CHANGES_NOT_A_DIRECTORY')) throw error;
      });
    }
  }

  /** Runs `use` on the entry's parent directory, opened afresh from the root, and the entry's own name. */
  private async inParent(components: readonly Buffer[], use: (parent: FileHandle, leaf: Buffer) => Promise<void>): Promise<void> {
    const leaf = components.at(-1);
    if (!leaf) throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_ENTRY', 'the root has no parent here');
    await this.inDirectory(components.slice(0, -1), (parent) => use(parent, leaf));
  }

  /** Runs `use` on the directory `components` name, opened one component at a time from the root, never through a link. */
  private async inDirectory(components: readonly Buffer[], use: (directory: FileHandle) => Promise<void>): Promise<void> {
    let current = this.root;
    try {
      for (let depth = 0; depth < components.length; depth++) {
        const next = await open(inside(current, components[depth] as Buffer), OPEN_DIRECTORY).catch((error: NodeJS.ErrnoException) => {
          if (error.code !== 'ELOOP' && error.code !== 'ENOTDIR' && error.code !== 'ENOENT') throw error;
          throw new DiskChangesError('HAUL_DISK_CHANGES_NOT_A_DIRECTORY', `${shownPath(components, depth)} is not a directory here (${error.code}): nothing is placed below it`, { cause: error });
        });
        if (current !== this.root) await current.close();
        current = next;
        if ((await current.stat()).dev !== this.device) {
          throw new DiskChangesError('HAUL_DISK_CHANGES_OTHER_FILESYSTEM', `${shownPath(components, depth)} is another filesystem mounted under the root: nothing is placed there`);
        }
      }
      await use(current);
    } finally {
      if (current !== this.root) await current.close();
    }
  }
}

interface Attributes {
  readonly uid: number;
  readonly gid: number;
  readonly mode: number;
  readonly mtime: Date;
}

const SLASH = Buffer.from('/');

/**
 * A path for `name` in the directory open as `directory`: the kernel resolves /proc/self/fd/N to
 * the open directory itself, not to whatever its path names by now (proc(5), "magic links"), so
 * with `name` one component this is openat(N, name) for the calls Node has only in path form.
 */
function inside(directory: FileHandle, name: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`/proc/self/fd/${directory.fd}/`), name]);
}

function ownerId(fromPax: string | undefined, fromHeader: number): number {
  if (fromPax === undefined) return fromHeader;
  const id = Number(fromPax);
  if (!/^\d{1,10}$/.test(fromPax) || id > 0xfffffffe) throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_ENTRY', `bad owner id ${JSON.stringify(fromPax)}`);
  return id;
}

function modeOf(fromPax: string | undefined, fromHeader: number): number {
  if (fromPax === undefined) return fromHeader & 0o7777;
  if (!/^[0-7]{1,4}$/.test(fromPax)) throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_ENTRY', `bad mode ${JSON.stringify(fromPax.slice(0, 80))}`);
  return parseInt(fromPax, 8);
}

/**
 * Where a file entry's content goes in the file: all of it from offset 0, or, for a sparse file
 * (DISK_PAX.sparse), its map first and then each data segment at its offset, holes left unwritten.
 */
class FileLayout {
  readonly size: number;
  private readonly map: Buffer;
  private mapFilled = 0;
  private segments: DataSegment[] = [];
  private segment = 0;
  private inSegment = 0;
  dataBytes = 0;

  constructor(sparse: string | undefined, private readonly contentBytes: number) {
    if (sparse === undefined) {
      this.size = contentBytes;
      this.map = Buffer.alloc(0);
      if (contentBytes > 0) this.segments = [{ offset: 0, length: contentBytes }];
    } else {
      const { size, mapBytes } = parseSparseRecord(sparse, contentBytes);
      this.size = size;
      this.map = Buffer.alloc(mapBytes);
      if (mapBytes === 0) this.segments = decodeSparseMap(this.map, size, contentBytes);
    }
  }

  async write(chunk: Buffer, file: FileHandle): Promise<void> {
    let at = 0;
    while (at < chunk.length) {
      if (this.mapFilled < this.map.length) {
        const copied = chunk.copy(this.map, this.mapFilled, at);
        this.mapFilled += copied;
        at += copied;
        if (this.mapFilled === this.map.length) this.segments = decodeSparseMap(this.map, this.size, this.contentBytes - this.map.length);
        continue;
      }
      const segment = this.segments[this.segment];
      if (!segment) throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_ENTRY', 'a file entry holds more than its map');
      const length = Math.min(segment.length - this.inSegment, chunk.length - at);
      // a write to a regular file may still be short (a signal, a full disk that then errors)
      const { bytesWritten } = await file.write(chunk, at, length, segment.offset + this.inSegment);
      at += bytesWritten;
      this.dataBytes += bytesWritten;
      this.inSegment += bytesWritten;
      if (this.inSegment === segment.length) {
        this.segment++;
        this.inSegment = 0;
      }
    }
  }
}

function asideName(): Buffer {
  return Buffer.from(`.haul-${randomBytes(6).toString('hex')}`);
}

/**
 * Removes `path` (`shown` for people) and, if a directory, all below it, never following a link
 * (lstat, then unlink or descend) and never into another filesystem (Node's rm would empty a mount
 * point before failing on it): those are passed to `kept` and stay, with the directories above
 * them. Paths below `path` are resolved by name: nothing else writes this tree meanwhile (the
 * container is not running here yet), so what lstat saw is what is removed. Whether all went.
 */
async function removeTree(path: Buffer, shown: Buffer, device: number, kept: (shown: Buffer) => void): Promise<boolean> {
  const info = await lstat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (!info) return true;
  if (!info.isDirectory()) {
    await unlink(path);
    return true;
  }
  if (info.dev !== device) {
    kept(shown);
    return false;
  }
  let whole = true;
  for (const name of await readdir(path, { encoding: 'buffer' })) {
    if (!(await removeTree(Buffer.concat([path, SLASH, name]), Buffer.concat([shown, SLASH, name]), device, kept))) whole = false;
  }
  if (whole) await rmdir(path);
  return whole;
}

/** Components as the relative path they make. */
function joined(components: readonly Buffer[]): Buffer {
  return Buffer.concat(components.flatMap((component, i) => (i ? [SLASH, component] : [component])));
}

/** The first `depth` + 1 components, for messages. */
function shownPath(components: readonly Buffer[], depth: number): string {
  return JSON.stringify(joined(components.slice(0, depth + 1)).toString('utf8'));
}

function within(ranges: OwnerIds['uids'], id: number): boolean {
  return ranges.some(({ first, count }) => id >= first && id < first + count);
}
