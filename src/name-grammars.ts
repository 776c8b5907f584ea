import type { PagemapTarget } from './criu/page-server/protocol.js';

/**
 * The grammars of the names haul takes from outside its trust (a peer's messages, files Incus'
 * rsync brought) before any of them becomes part of a path, a URL or a command. A name that does
 * not fit is refused whole, never repaired (no basename(), no stripping): a repaired name is one
 * the sender did not mean, and may name a file haul keeps for itself.
 */

export type NameKind = 'migration id' | 'instance name' | 'CRIU image file name' | 'page stream name';

/** A name that is not what its kind may be; nothing was made of it. */
export class BadNameError extends Error {
  override readonly name = 'BadNameError';
  readonly code = 'HAUL_BAD_NAME';

  constructor(
    readonly kind: NameKind,
    readonly refused: string,
    rule: string,
  ) {
    super(`refused the ${kind} ${JSON.stringify(refused.length > 200 ? `${refused.slice(0, 200)}...` : refused)}: ${rule}`);
  }
}

/** How the source makes one: node's crypto.randomUUID() (plugin/source-role.ts), lower-case hex. */
const MIGRATION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

// Incus' internal/instance ValidName for a non-snapshot name is shared/validate IsHostname: 1-63
// characters, letters, digits and '-', not starting with a digit or '-', not ending with '-'.
const INSTANCE_NAME = /^[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

// CRIU's image names (criu/image-desc.c imgset_template): lower-case words and numbers (decimal, or
// hex for ghost-file and tcp-stream) joined by '-', then ".img", tmpfs ones ".tar.gz.img"; and the
// two service files without a suffix, stats-dump / stats-restore and irmap-cache.
const CRIU_IMAGE_NAME = /^(?:[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?:\.tar\.gz)?\.img|stats-(?:dump|restore)|irmap-cache)$/;

/** The longest name a single path component may have on Linux (NAME_MAX). */
const NAME_MAX = 255;

function checked(kind: NameKind, value: unknown, grammar: RegExp, rule: string): string {
  const text = typeof value === 'string' ? value : String(value);
  if (typeof value !== 'string' || value.length > NAME_MAX || !grammar.test(value)) throw new BadNameError(kind, text, rule);
  return value;
}

/** `value` if it is a migration id as haul's source makes them (a UUID), else BadNameError. */
export function migrationId(value: unknown): string {
  return checked('migration id', value, MIGRATION_ID, 'a migration id is a UUID (8-4-4-4-12 lower-case hex digits)');
}

/** `value` if Incus would take it as an instance name, else BadNameError. */
export function instanceName(value: unknown): string {
  return checked('instance name', value, INSTANCE_NAME, "an Incus instance name is 1-63 letters, digits and '-', starting with a letter and not ending with '-'");
}

/** `value` if it is a file name CRIU writes into an image directory, else BadNameError. */
export function criuImageName(value: unknown): string {
  return checked('CRIU image file name', value, CRIU_IMAGE_NAME, "a CRIU image is named like core-1.img: lower-case words and numbers joined by '-', then .img (or stats-dump, stats-restore, irmap-cache)");
}

// proxy/page-stream.ts pageChannelName: a pagemap's image name without ".img"; ids are CRIU's
// pids and shmem ids, which fit 32 bits
const PAGE_STREAM_NAME = /^pagemap-(shmem-)?([1-9][0-9]{0,9}|0)$/;

/** The pagemap a page stream's name says it carries, if the name fits, else BadNameError. */
export function pageStreamTarget(value: unknown): PagemapTarget {
  const match = PAGE_STREAM_NAME.exec(checked('page stream name', value, PAGE_STREAM_NAME, 'it does not name a pagemap (pagemap-N or pagemap-shmem-N)'));
  return { type: match![1] ? 'shmem' : 'pid', id: Number(match![2]) };
}

export function isCriuImageName(value: string): boolean {
  return value.length <= NAME_MAX && CRIU_IMAGE_NAME.test(value);
}
