import { readdirSync } from 'node:fs';
import { statFields, type ProcessIdentity } from './process-identity.js';

interface ProcessEntry {
  readonly pid: number;
  readonly ppid: number;
  readonly startTime: string;
}

/**
 * Kills a `criu restore` and every process it made. SIGKILL to CRIU alone leaves the tasks it was
 * restoring behind for good (seen with CRIU 4.1.1: the root task, usernsd and a helper, each
 * waiting on CRIU in the restorer, reparented to init). They are CRIU's children and, with
 * --restore-sibling, the root task it cloned with CLONE_PARENT (criu/cr-restore.c), a child of
 * CRIU's parent started after CRIU; the restored tree hangs below them. CRIU is stopped first so
 * that it makes no new one while they are found. Returns how many processes were killed besides
 * CRIU; never throws (a process may end meanwhile).
 */
export function killRestoreTree(criu: ProcessIdentity): number {
  const own = entryOf(criu.pid);
  if (!own || own.startTime !== criu.startTime) return 0;
  signal(criu.pid, 'SIGSTOP');
  const all = allProcesses();
  const children = new Map<number, ProcessEntry[]>();
  for (const entry of all) children.set(entry.ppid, [...(children.get(entry.ppid) ?? []), entry]);
  const made = (children.get(own.ppid) ?? []).filter((sibling) => sibling.pid !== own.pid && Number(sibling.startTime) >= Number(own.startTime));
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
  return killed;
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

/** Field 4 of /proc/PID/stat (ppid) and 22 (start time). */
function entryOf(pid: number): ProcessEntry | undefined {
  const fields = statFields(pid);
  return fields === undefined ? undefined : { pid, ppid: Number(fields[1]), startTime: fields[19]! };
}
