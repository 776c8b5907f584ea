import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * A process as the agent follows it by pid: the pid and its start time (field 22 of
 * /proc/PID/stat), so that a pid reused by another process is not taken for it.
 */
export interface ProcessIdentity {
  readonly pid: number;
  readonly startTime: string;
}

/** The process now running as `pid`, or undefined if there is none. */
export function identify(pid: number): ProcessIdentity | undefined {
  const startTime = statFields(pid)?.[19];
  return startTime === undefined ? undefined : { pid, startTime };
}

/** Whether that same process still runs (a zombie has ended). */
export function isRunning(process: ProcessIdentity): boolean {
  const now = statFields(process.pid);
  return now !== undefined && now[19] === process.startTime && now[0] !== 'Z';
}

/** Resolves once that process has ended (looking every `pollMs`), or after `limitMs` at the latest. */
export async function hasEnded(process: ProcessIdentity | undefined, pollMs: number, limitMs: number): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (process && isRunning(process) && Date.now() < deadline) await sleep(pollMs);
}

/** /proc/PID/stat from field 3 on (after the command name, which may hold spaces). */
export function statFields(pid: number): string[] | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return text.slice(text.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}
