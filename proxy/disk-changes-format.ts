/**
 * What a tar of disk changes (packDiskChanges -> applyDiskChanges) carries beyond plain pax, and the
 * grammar its entry names obey. The sender is the container's filesystem: every field is checked
 * here before it becomes a path, a mode or a size.
 */

/** Pax records of haul's own. */
export const DISK_PAX = {
  /** The entry's relative path as base64 of its bytes, when they are not UTF-8 (pax paths are). */
  path: 'HAUL.path',
  /** A symlink's target as base64 of its bytes, when they are not UTF-8. */
  linkpath: 'HAUL.linkpath',
  /** The permission bits in octal: tar-stream's pack turns a mode of 0 into its default 0644. */
  mode: 'HAUL.mode',
  /**
   * On a file entry named after a directory: how many names that directory holds. The entry's
   * content is their bytes, NUL-separated (a directory's list can pass any one pax record's bound:
   * tar-stream refuses pax headers over 4 MiB), so that the other side removes what it lacks.
   */
  names: 'HAUL.names',
  /**
   * On a file entry: "<size> <segments>". The file is sparse: its content starts with a map of
   * its data segments (SPARSE_SEGMENT_BYTES each), followed by their bytes; the rest are holes.
   */
  sparse: 'HAUL.sparse',
  /**
   * On the last entry (an empty file entry named `.`): the tar is whole. tar-stream takes a tar
   * cut at an entry boundary, without its two zero blocks, for a complete one.
   */
  end: 'HAUL.end',
} as const;

/** A map segment: offset and length, each an unsigned 64-bit big-endian integer. */
export const SPARSE_SEGMENT_BYTES = 16;

/** Bound on one directory's list of names, which the applier holds in memory. */
export const MAX_NAMES_BYTES = 512 * 1024 ** 2;

export interface DataSegment {
  readonly offset: number;
  readonly length: number;
}

export function encodeSparseMap(segments: readonly DataSegment[]): Buffer {
  const map = Buffer.alloc(segments.length * SPARSE_SEGMENT_BYTES);
  segments.forEach(({ offset, length }, i) => {
    map.writeBigUInt64BE(BigInt(offset), i * SPARSE_SEGMENT_BYTES);
    map.writeBigUInt64BE(BigInt(length), i * SPARSE_SEGMENT_BYTES + 8);
  });
  return map;
}

/**
 * The segments a map holds, refused unless they are in order, apart, non-empty, within `size`, and
 * their lengths add up to `dataBytes` (what the entry holds after the map).
 */
export function decodeSparseMap(map: Buffer, size: number, dataBytes: number): DataSegment[] {
  const refuse = (why: string): never => {
    throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_ENTRY', `a sparse file's map is malformed: ${why}`);
  };
  const segments: DataSegment[] = [];
  let end = 0;
  let total = 0;
  for (let at = 0; at < map.length; at += SPARSE_SEGMENT_BYTES) {
    const offset = Number(map.readBigUInt64BE(at));
    const length = Number(map.readBigUInt64BE(at + 8));
    if (offset < end) refuse('its segments overlap or are out of order');
    if (length === 0) refuse('it has an empty segment');
    if (offset + length > size) refuse('a segment passes the end of the file');
    segments.push({ offset, length });
    end = offset + length;
    total += length;
  }
  if (total !== dataBytes) refuse(`its segments hold ${total} bytes, the entry ${dataBytes}`);
  return segments;
}

/** "<size> <segments>" of a HAUL.sparse record, checked. */
export function parseSparseRecord(value: string, contentBytes: number): { readonly size: number; readonly mapBytes: number } {
  const match = /^(\d{1,16}) (\d{1,16})$/.exec(value);
  const size = Number(match?.[1]);
  const mapBytes = Number(match?.[2]) * SPARSE_SEGMENT_BYTES;
  if (!match || !Number.isSafeInteger(size) || mapBytes > contentBytes) {
    throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_ENTRY', `bad sparse record ${JSON.stringify(value.slice(0, 80))}`);
  }
  return { size, mapBytes };
}

/** A directory's names as an entry carries them: NUL-separated. */
export function encodeNames(names: readonly Buffer[]): Buffer {
  return Buffer.concat(names.flatMap((name, i) => (i ? [NUL, name] : [name])));
}

/** The names a HAUL.names entry carries, each checked (isComponent), as many as its record says. */
export function decodeNames(list: Buffer, countRecord: string): Buffer[] {
  const names: Buffer[] = [];
  if (list.length > 0) {
    let start = 0;
    for (let at = 0; at <= list.length; at++) {
      if (at < list.length && list[at] !== 0) continue;
      names.push(list.subarray(start, at));
      start = at + 1;
    }
  }
  if (!/^\d{1,10}$/.test(countRecord) || names.length !== Number(countRecord) || !names.every(isComponent)) {
    throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_NAME', 'a directory\'s list of names is malformed');
  }
  return names;
}

const NUL = Buffer.from([0]);

/** Default cap on the bytes of tar one move may carry (the container is frozen meanwhile). */
export const DEFAULT_MAX_DISK_CHANGES_BYTES = 4 * 1024 ** 3;

/** Linux's PATH_MAX less its NUL, and NAME_MAX (include/uapi/linux/limits.h). */
const MAX_PATH_BYTES = 4095;
const MAX_NAME_BYTES = 255;

export type DiskChangesErrorCode =
  /** An entry name (or a name in a directory's list) outside the grammar. */
  | 'HAUL_DISK_CHANGES_BAD_NAME'
  /** An entry of a type, or with a field, this side does not take; `.` as anything but a directory. */
  | 'HAUL_DISK_CHANGES_BAD_ENTRY'
  /** A path component that is not a real directory here (a symlink, a file, missing). */
  | 'HAUL_DISK_CHANGES_NOT_A_DIRECTORY'
  /** A path through, or a removal into, another filesystem mounted under the root. */
  | 'HAUL_DISK_CHANGES_OTHER_FILESYSTEM'
  /** More bytes than the cap. */
  | 'HAUL_DISK_CHANGES_TOO_LARGE'
  /** The tar could not be read (tar-stream refused it), or this host failed writing it: see the cause. */
  | 'HAUL_DISK_CHANGES_FAILED'
  /** An owner (uid or gid) outside the ids the container's own root may give its files. */
  | 'HAUL_DISK_CHANGES_BAD_OWNER'
  /** The tar ended before the packer's end entry (DISK_PAX.end). */
  | 'HAUL_DISK_CHANGES_INCOMPLETE';

export class DiskChangesError extends Error {
  override readonly name = 'DiskChangesError';
  constructor(readonly code: DiskChangesErrorCode, message: string, options?: { cause?: unknown }) {
    super(`disk changes: ${message}`, options);
  }
}

const SLASH = 0x2f;
const DOT = 0x2e;

/**
 * The components of an entry's relative path (none for the root, `.`), or a BAD_NAME error: a
 * relative path of at most 4095 bytes, components of 1 to 255 bytes that are neither `.` nor `..`,
 * no NUL, no empty component; one trailing slash only on a directory.
 */
export function entryPathComponents(path: Buffer, isDirectory: boolean): Buffer[] {
  const shown = JSON.stringify(path.toString('utf8'));
  const refuse = (why: string): never => {
    throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_NAME', `refusing the entry name ${shown}: ${why}`);
  };
  let body = path;
  if (isDirectory && body.length > 1 && body[body.length - 1] === SLASH) body = body.subarray(0, -1);
  if (body.length === 1 && body[0] === DOT) return [];
  if (body.length === 0) refuse('it is empty');
  if (body.length > MAX_PATH_BYTES) refuse(`it is longer than ${MAX_PATH_BYTES} bytes`);
  if (body.includes(0)) refuse('it holds a NUL');
  if (body[0] === SLASH) refuse('it is absolute');
  const components: Buffer[] = [];
  let start = 0;
  for (let at = 0; at <= body.length; at++) {
    if (at < body.length && body[at] !== SLASH) continue;
    const component = body.subarray(start, at);
    if (!isComponent(component)) refuse(`its component ${JSON.stringify(component.toString('utf8'))} is not a name`);
    components.push(component);
    start = at + 1;
  }
  return components;
}

/** One name in a directory: 1 to 255 bytes, no slash, no NUL, neither `.` nor `..`. */
export function isComponent(name: Buffer): boolean {
  if (name.length === 0 || name.length > MAX_NAME_BYTES) return false;
  if (name.includes(SLASH) || name.includes(0)) return false;
  return !(name[0] === DOT && (name.length === 1 || (name.length === 2 && name[1] === DOT)));
}

/** The bytes a base64 pax value stands for; refused unless it is canonical base64. */
export function bytesOfBase64(value: string, what: string): Buffer {
  const bytes = Buffer.from(value, 'base64');
  if (bytes.toString('base64') !== value) throw new DiskChangesError('HAUL_DISK_CHANGES_BAD_NAME', `${what} is not base64: ${JSON.stringify(value.slice(0, 80))}`);
  return bytes;
}

/** A string's bytes if it is their UTF-8 (so a pax record can carry it), else undefined. */
export function asUtf8(bytes: Buffer): string | undefined {
  const text = bytes.toString('utf8');
  return Buffer.from(text, 'utf8').equals(bytes) ? text : undefined;
}
