/** One value as a POSIX sh word: single-quoted, its own single quotes spelled '\''. */
export function shellWord(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/** Values as sh words for `eval "set -- …"`, or for a script haul writes. */
export function shellWords(values: readonly string[]): string {
  return values.map(shellWord).join(' ');
}
