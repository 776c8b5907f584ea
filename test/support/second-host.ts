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
    const pids = readFileSync(holders, 'utf8').split('\n').filter(Boolean).map(Number);
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    // a holder is its namespace's init: the kernel ends its tree before the holder becomes a
    // zombie, and until then the restored tree may still write into the test's scratch directory
    // (which the next cleanup removes: a file made meanwhile failed it with ENOTEMPTY)
    const deadline = Date.now() + 5_000;
    while (pids.some(isLive) && Date.now() < deadline) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
  });
}

/** Whether `pid` is a process that has not yet exited (a zombie has). */
function isLive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/**
 * Ends a second host started as `unshare --pid --fork --kill-child … <init>` (child: the unshare
 * process) with all it restored, and returns once the namespace's tree is gone: until then a
 * restored process may still be writing into a directory the caller is about to remove.
 */
export function endSecondHost(child: { pid?: number | undefined; kill(signal: NodeJS.Signals): boolean }): void {
  const init = child.pid === undefined ? undefined : firstChild(child.pid);
  if (init !== undefined) {
    try {
      process.kill(init, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  child.kill('SIGKILL');
  const deadline = Date.now() + 10_000;
  while (init !== undefined && isLive(init) && Date.now() < deadline) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
}

function firstChild(pid: number): number | undefined {
  try {
    const first = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ')[0];
    return first ? Number(first) : undefined;
  } catch {
    return undefined;
  }
}
