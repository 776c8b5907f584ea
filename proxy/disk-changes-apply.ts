import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { chmod, chown, lchown, lstat, lutimes, mkdir, readdir, rename, rm, symlink, utimes } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { DIRECTORY_NAMES_PAX } from './disk-changes-pack.js';

export interface DiskChangesApplied {
  readonly files: number;
  readonly directories: number;
  readonly symlinks: number;
  /** Entries removed because their directory's list no longer names them. */
  readonly removed: number;
  readonly bytes: number;
}

export class DiskChangesError extends Error {
  override readonly name = 'DiskChangesError';
}

/**
 * Applies a tar of disk changes (packDiskChanges) onto the filesystem at `root`: files and symlinks
 * replace what was there (written aside, then renamed in), directories get their owner, mode and
 * time, and lose the names their source no longer has. Names are the sender's word: none may leave
 * `root`, and no path is resolved through a symlink found under it (the container made those).
 */
export async function applyDiskChanges(source: Readable, root: string): Promise<DiskChangesApplied> {
  const counts = { files: 0, directories: 0, symlinks: 0, removed: 0, bytes: 0 };
  const realDirectories = new Set<string>(['.']);
  // set last, deepest first: writing into a directory changes its time
  const directoryTimes: Array<{ path: string; mtime: Date }> = [];
  const extract = tar.extract();
  const entries = (async () => {
    for await (const entry of extract) {
      const header = entry.header;
      const relative = checkedName(header.name);
      await ensureParentsAreDirectories(root, relative, realDirectories);
      const path = relative === '.' ? root : `${root}/${relative}`;
      const pax = (header.pax ?? {}) as Record<string, string>;
      const uid = ownerId(pax['uid'], header.uid);
      const gid = ownerId(pax['gid'], header.gid);
      const mode = (header.mode ?? 0o644) & 0o7777;
      const mtime = header.mtime ?? new Date();
      switch (header.type) {
        case 'directory': {
          const existing = await lstat(path).catch(() => undefined);
          if (existing && !existing.isDirectory()) await rm(path, { recursive: true, force: true });
          if (!existing?.isDirectory()) await mkdir(path);
          realDirectories.add(relative);
          const listed = pax[DIRECTORY_NAMES_PAX];
          if (listed !== undefined) {
            const keep = new Set(parseNames(listed, relative));
            for (const name of await readdir(path)) {
              if (keep.has(name)) continue;
              await rm(`${path}/${name}`, { recursive: true, force: true });
              counts.removed++;
            }
          }
          await chown(path, uid, gid);
          await chmod(path, mode);
          directoryTimes.push({ path, mtime });
          counts.directories++;
          entry.resume();
          break;
        }
        case 'file': {
          const aside = besideName(path);
          try {
            await pipeline(entry as unknown as AsyncIterable<Buffer>, createWriteStream(aside, { flags: 'wx', mode: 0o600 }));
            await chown(aside, uid, gid);
            await chmod(aside, mode); // after chown, which clears set-id bits
            await utimes(aside, mtime, mtime);
            await replaceWith(aside, path);
          } catch (error) {
            await rm(aside, { force: true });
            throw error;
          }
          counts.files++;
          counts.bytes += header.size ?? 0;
          break;
        }
        case 'symlink': {
          const aside = besideName(path);
          await symlink(header.linkname ?? '', aside);
          await lchown(aside, uid, gid);
          await lutimes(aside, mtime, mtime);
          await replaceWith(aside, path);
          counts.symlinks++;
          entry.resume();
          break;
        }
        default:
          entry.resume();
          throw new DiskChangesError(`disk changes: cannot apply ${header.name} of type ${header.type}`);
      }
    }
  })();
  await Promise.all([pipeline(source, extract as unknown as NodeJS.WritableStream), entries]);
  for (const { path, mtime } of directoryTimes.reverse()) await utimes(path, mtime, mtime);
  return counts;
}

function ownerId(fromPax: string | undefined, fromHeader: number): number {
  if (fromPax === undefined) return fromHeader;
  const id = Number(fromPax);
  if (!Number.isInteger(id) || id < 0 || id > 0xffffffff) throw new DiskChangesError(`disk changes: bad owner id ${JSON.stringify(fromPax)}`);
  return id;
}

function checkedName(name: string): string {
  const trimmed = name.replace(/\/+$/, '');
  if (trimmed === '.' || trimmed === '') return '.';
  const parts = trimmed.split('/');
  if (trimmed.startsWith('/') || parts.some((part) => part === '' || part === '.' || part === '..')) {
    throw new DiskChangesError(`disk changes: refusing the entry name ${JSON.stringify(name)}`);
  }
  return trimmed;
}

function parseNames(text: string, directory: string): string[] {
  const names: unknown = JSON.parse(text);
  if (!Array.isArray(names) || names.some((name) => typeof name !== 'string' || name.includes('/') || name === '.' || name === '..')) {
    throw new DiskChangesError(`disk changes: the list of names for ${directory} is malformed`);
  }
  return names as string[];
}

/** Every ancestor of `relative` must be a real directory (not a symlink) under root. */
async function ensureParentsAreDirectories(root: string, relative: string, known: Set<string>): Promise<void> {
  const parts = relative === '.' ? [] : relative.split('/').slice(0, -1);
  let prefix = '';
  for (const part of parts) {
    prefix = prefix ? `${prefix}/${part}` : part;
    if (known.has(prefix)) continue;
    const info = await lstat(`${root}/${prefix}`).catch(() => undefined);
    if (!info?.isDirectory()) throw new DiskChangesError(`disk changes: ${prefix} is not a directory here, so ${relative} cannot be placed`);
    known.add(prefix);
  }
}

function besideName(path: string): string {
  const slash = path.lastIndexOf('/');
  return `${path.slice(0, slash)}/.haul-${randomBytes(6).toString('hex')}`;
}

async function replaceWith(aside: string, path: string): Promise<void> {
  const existing = await lstat(path).catch(() => undefined);
  if (existing?.isDirectory()) await rm(path, { recursive: true, force: true });
  await rename(aside, path);
}
