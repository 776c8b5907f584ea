import { readFileSync, writeFileSync } from 'node:fs';
import { REPO } from './paths.js';

/** `criu` for the destination of a migration on this one machine: restores in its own pid namespace. */
export const CRIU_ON_SECOND_HOST = `${REPO}/test/support/criu-in-pid-namespace.sh`;

/**
 * Records the namespaces CRIU_ON_SECOND_HOST leaves holding restored processes (in `dir`), and ends
 * them, with what they hold, after the test.
 */
export function holdRestoredProcesses(dir: string, defer: (cleanup: () => void) => void): void {
  const holders = `${dir}/holders`;
  writeFileSync(holders, '');
  process.env['HAUL_TEST_HOLDERS'] = holders;
  defer(() => {
    for (const pid of readFileSync(holders, 'utf8').split('\n').filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}
