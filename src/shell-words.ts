/** One value as a POSIX sh word: single-quoted, its own single quotes spelled '\''. */
export function shellWord(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}
