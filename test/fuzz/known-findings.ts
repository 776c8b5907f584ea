/**
 * Failures the fuzzer finds in code another change owns, reported there with their inputs and not
 * fixed here. The CI fuzz test tolerates exactly these (by target and the start of their failure
 * kind, see failureKind) and fails on anything else; remove an entry once its fix is in, and the
 * test says when one no longer occurs.
 */
export interface KnownFinding {
  readonly target: string;
  /** The failure kinds it shows as: their start (`crash Error: Unexpected end of data`), or a pattern. */
  readonly kinds: ReadonlyArray<string | RegExp>;
  readonly why: string;
}

// The applier's findings (a root replaced, times set through a link, tar-stream's and the file
// system's errors unwrapped, NUL in names, NaN owners) are fixed: none left to tolerate.
export const KNOWN_FINDINGS: readonly KnownFinding[] = [];

/** The known finding a failure kind of `target` is, if any. */
export function knownFinding(target: string, kind: string): KnownFinding | undefined {
  return KNOWN_FINDINGS.find((finding) => finding.target === target && finding.kinds.some((start) => (typeof start === 'string' ? kind.startsWith(start) : start.test(kind))));
}
