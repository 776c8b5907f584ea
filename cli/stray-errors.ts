/**
 * The last line of defence of the long-running commands (`haul cache`, `haul migrate`, `haul
 * agent run`): an error nothing caught, or a promise nobody awaited that rejected, is logged loudly
 * with its stack and the process goes on, instead of ending every migration it is serving (node's
 * default exits on both). Each such error is a bug at its site, to be fixed there; this only keeps
 * one bug from becoming an outage. Tests do not install it: vitest reports such errors as failures.
 */
export function logStrayErrors(log: (line: string) => void): void {
  const report = (what: string) => (error: unknown) => {
    const text = error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : String(error);
    const code = error instanceof Error && 'code' in error ? ` [${String((error as { code: unknown }).code)}]` : '';
    log(`BUG: ${what}${code}, kept running: ${text.replace(/\n\s*/g, ' | ')}`);
  };
  // a closed output (EPIPE: the reader of a pipe went away) must not end the process either, nor
  // come back here through the log line that reports it
  for (const output of [process.stdout, process.stderr]) output.on('error', () => {});
  process.on('uncaughtException', report('an error nothing caught'));
  process.on('unhandledRejection', report('a promise nobody awaited rejected'));
}
