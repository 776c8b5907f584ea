/**
 * The grammars of the names haul takes from outside its trust (a peer's messages, files Incus'
 * rsync brought) before any of them becomes part of a path, a URL or a command. A name that does
 * not fit is refused whole, never repaired (no basename(), no stripping): a repaired name is one
 * the sender did not mean, and may name a file haul keeps for itself.
 */

/** What the refused name was to be: 'migration id', 'instance name', 'CRIU image file name', ... */
export type NameKind = string;

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

/** The longest name a single path component may have on Linux (NAME_MAX). */
export const NAME_MAX = 255;

/** `value` if it is a string of `grammar` and fits a path component, else BadNameError saying `rule`. */
export function checkedName(kind: NameKind, value: unknown, grammar: RegExp, rule: string): string {
  const text = typeof value === 'string' ? value : String(value);
  if (typeof value !== 'string' || value.length > NAME_MAX || !grammar.test(value)) throw new BadNameError(kind, text, rule);
  return value;
}

/** `value` if it is a migration id as haul's source makes them (a UUID), else BadNameError. */
export function migrationId(value: unknown): string {
  return checkedName('migration id', value, MIGRATION_ID, 'a migration id is a UUID (8-4-4-4-12 lower-case hex digits)');
}
