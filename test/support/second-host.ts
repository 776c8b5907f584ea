import { readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
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
export function isLive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/**
 * Ends a second host started as `unshare --pid --fork --kill-child … <init>` (child: the unshare
 * process) with all it restored, and returns once no process of its pid namespace is left: until
 * then a restored process may still be writing into a directory the caller is about to remove.
 */
export function endSecondHost(child: { pid?: number | undefined; kill(signal: NodeJS.Signals): boolean }): void {
  const init = child.pid === undefined ? undefined : firstChild(child.pid);
  const namespace = init === undefined ? undefined : pidNamespaceOf(init);
  if (init !== undefined) {
    try {
      process.kill(init, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  child.kill('SIGKILL');
  const deadline = Date.now() + 30_000;
  const left = (): boolean => (init !== undefined && isLive(init)) || (namespace !== undefined && inNamespace(namespace));
  while (left() && Date.now() < deadline) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
}

function firstChild(pid: number): number | undefined {
  try {
    const first = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ')[0];
    return first ? Number(first) : undefined;
  } catch {
    return undefined;
  }
}

function pidNamespaceOf(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/pid`);
  } catch {
    return undefined;
  }
}

/** Whether any process still lives in that pid namespace (a zombie does not count). */
function inNamespace(namespace: string): boolean {
  return readdirSync('/proc').some((name) => /^\d+$/.test(name) && isLive(Number(name)) && pidNamespaceOf(Number(name)) === namespace);
}
