/**
 * Failures the fuzzer finds in code another change owns, reported there with their inputs and not
 * fixed here. The CI fuzz test tolerates exactly these (by target and the start of their failure
 * kind, see failureKind) and fails on anything else; remove an entry once its fix is in, and the
 * test says when one no longer occurs.
 */
export interface KnownFinding {
  readonly target: string;
  /** The start of the failure kind, e.g. `crash Error: Unexpected end of data`. */
  readonly kind: string;
  readonly why: string;
}

export const KNOWN_FINDINGS: readonly KnownFinding[] = [
  {
    target: 'disk-changes',
    kind: 'crash Error: ',
    why: "tar-stream's own errors (Invalid tar header, Unexpected end of data, …) leave applyDiskChanges unwrapped, not as DiskChangesError",
  },
  {
    target: 'disk-changes',
    kind: 'crash SyntaxError: ',
    why: 'a HAUL.names pax record that is not JSON ends applyDiskChanges in JSON.parse\'s SyntaxError (parseNames)',
  },
  {
    target: 'disk-changes',
    kind: 'invariant InvariantBroken: applying reached outside its root: the root is still a directory',
    why: 'a directory entry, then a symlink entry of the same name to outside: the directory times set at the end follow the link (utimes) outside the root',
  },
  {
    target: 'disk-changes',
    kind: 'invariant InvariantBroken: applying reached outside its root: the root was replaced',
    why: 'an entry named "." of type symlink (or file) replaces the root directory itself, written aside in the root\'s parent and renamed over it',
  },
];
