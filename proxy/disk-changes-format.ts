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
} as const;

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
  /** More bytes than the cap. */
  | 'HAUL_DISK_CHANGES_TOO_LARGE';

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
