import { execFile, execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { REPO } from './paths.js';

const run = promisify(execFile);
const SCRIPT = join(REPO, 'scripts/realhost');

/** Where a host of scripts/realhost has its root, seen from this machine. */
export const rootOf = (host: string): string => `/var/lib/haul-testbed/realhost/${host}`;

/** A short command inside `host` (all its namespaces); throws with its stderr when it fails. */
export const on = (host: string, ...command: string[]): string =>
  execFileSync(SCRIPT, ['run', host, ...command], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024 });

/**
 * For what may take seconds (apt, restarting incusd, a move): the worker stays free to answer vitest
 * meanwhile. Its stdin is `input`, or closed at once (`incus exec` waits for the end of its stdin).
 */
export async function onAsync(host: string, command: readonly string[], input = ''): Promise<string> {
  const child = run(SCRIPT, ['run', host, ...command], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024, timeout: 300_000, killSignal: 'SIGKILL' });
  child.child.stdin!.end(input);
  return (await child).stdout;
}

/** A fresh host: whatever an interrupted run left of one by that name goes first. `address`: on the hosts' LAN. */
export async function freshHost(host: string, address?: string): Promise<void> {
  await run(SCRIPT, ['down', host]);
  await run(SCRIPT, ['up', host, ...(address ? [address] : [])], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 });
}

export async function downHost(host: string): Promise<void> {
  await run(SCRIPT, ['down', host]);
}

/** Builds haul's .deb into `dir` (npm run package), resolving its path. */
export async function buildPackage(dir: string): Promise<string> {
  return (await run(join(REPO, 'scripts/package'), [dir], { cwd: REPO, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 })).stdout.trim();
}

export const journalOf = (host: string, unit: string): string => on(host, 'journalctl', '-u', unit, '-o', 'cat', '--no-pager');

export interface DoctorLine {
  readonly check: string;
  readonly ok: boolean;
  readonly found: string;
}

/** `haul doctor -f json` there; it exits 1 when a check fails, and its lines still say which. */
export function doctorOn(host: string): DoctorLine[] {
  try {
    return JSON.parse(on(host, 'haul', 'doctor', '-f', 'json')) as DoctorLine[];
  } catch (error) {
    return JSON.parse((error as { stdout: string }).stdout) as DoctorLine[];
  }
}

/** Polls `probe` until it returns something (a throw counts as nothing yet), for at most `ms`. */
export async function until<T>(what: string, probe: () => T | undefined, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const seen = (() => {
      try {
        return probe();
      } catch {
        return undefined;
      }
    })();
    if (seen !== undefined) return seen;
    if (Date.now() > deadline) throw new Error(`not within ${ms / 1000} s: ${what}`);
    await sleep(250);
  }
}
