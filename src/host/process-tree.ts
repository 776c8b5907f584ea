import { readdirSync, readlinkSync } from 'node:fs';
import { statFields, type ProcessIdentity } from './process-identity.js';

interface ProcessEntry {
  readonly pid: number;
  readonly ppid: number;
  readonly startTime: string;
  readonly state: string;
}

/**
 * Kills a `criu restore` and every process it made. SIGKILL to CRIU alone leaves the tasks it was
 * restoring behind for good (seen with CRIU 4.1.1: the root task, usernsd and a helper, each
 * waiting on CRIU in the restorer, reparented to init). They are CRIU's children and, with
 * --restore-sibling, the root task it cloned with CLONE_PARENT (criu/cr-restore.c), a child of
 * CRIU's parent started after CRIU, in a pid namespace of its own; the restored tree hangs below
 * them. CRIU is stopped first so
 * that it makes no new one while they are found. Returns how many processes were killed besides
 * CRIU; never throws (a process may end meanwhile).
 */
export function killRestoreTree(criu: ProcessIdentity): number {
  const own = entryOf(criu.pid);
  // ended (a zombie: its parent goes on to Incus' own hooks, which are not CRIU's to take along)
  if (!own || own.startTime !== criu.startTime || own.state === 'Z') return 0;
  signal(criu.pid, 'SIGSTOP');
  // a signal is delivered, not taken, when kill() returns: until CRIU is seen stopped it may still
  // clone the root task, after a look that missed it
  waitUntilStopped(criu.pid, STOP_WAIT_MS);
  const all = allProcesses();
  const children = new Map<number, ProcessEntry[]>();
  for (const entry of all) children.set(entry.ppid, [...(children.get(entry.ppid) ?? []), entry]);
  // the root task CRIU cloned as its sibling runs in the container's pid namespace, not ours;
  // a CRIU reparented to init has no siblings of its own making
  const ours = pidNamespaceOf(process.pid);
  const madeByCriu = (sibling: ProcessEntry): boolean => {
    if (own.ppid <= 1 || ours === undefined || sibling.ppid !== own.ppid || sibling.pid === own.pid || Number(sibling.startTime) < Number(own.startTime)) return false;
    const namespace = pidNamespaceOf(sibling.pid);
    return namespace !== undefined && namespace !== ours;
  };
  const made = (children.get(own.ppid) ?? []).filter(madeByCriu);
  const found: ProcessEntry[] = [];
  const pending = [...(children.get(own.pid) ?? []), ...made];
  while (pending.length > 0) {
    const next = pending.pop()!;
    if (found.some((entry) => entry.pid === next.pid)) continue;
    found.push(next);
    pending.push(...(children.get(next.pid) ?? []));
  }
  let killed = 0;
  for (const entry of found) {
    // the same process still, not one that took its pid since the scan
    if (entryOf(entry.pid)?.startTime === entry.startTime && signal(entry.pid, 'SIGKILL')) killed++;
  }
  signal(criu.pid, 'SIGKILL');
  // and a root task cloned all the same stays a child of CRIU's parent: look there once more
  for (const late of allProcesses()) {
    if (madeByCriu(late) && !found.some((entry) => entry.pid === late.pid) && signal(late.pid, 'SIGKILL')) killed++;
  }
  return killed;
}

const STOP_WAIT_MS = 1_000;

function waitUntilStopped(pid: number, limitMs: number): void {
  const pause = new Int32Array(new SharedArrayBuffer(4));
  const deadline = Date.now() + limitMs;
  for (;;) {
    const state = entryOf(pid)?.state;
    if (state === undefined || state === 'T' || state === 't' || state === 'Z' || Date.now() >= deadline) return;
    Atomics.wait(pause, 0, 0, 2);
  }
}

function signal(pid: number, name: NodeJS.Signals): boolean {
  try {
    process.kill(pid, name);
    return true;
  } catch {
    return false; // ended meanwhile
  }
}

function allProcesses(): ProcessEntry[] {
  const entries: ProcessEntry[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const entry = entryOf(Number(name));
    if (entry) entries.push(entry);
  }
  return entries;
}

/** Fields 3 (state), 4 (ppid) and 22 (start time) of /proc/PID/stat. */
function entryOf(pid: number): ProcessEntry | undefined {
  const fields = statFields(pid);
  return fields === undefined ? undefined : { pid, state: fields[0]!, ppid: Number(fields[1]), startTime: fields[19]! };
}

function pidNamespaceOf(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/pid`);
  } catch {
    return undefined;
  }
}
