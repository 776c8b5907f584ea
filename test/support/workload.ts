import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { WORKLOAD } from './paths.js';

const execFileAsync = promisify(execFile);

/** What haul-workload says about itself (test/workload/haul-workload.c documents the fields). */
export interface WorkloadReport {
  readonly pid: number;
  readonly mib: number;
  readonly checksum: string;
  readonly tick: number;
  readonly monoNs: bigint;
  readonly realNs: bigint;
  /**
   * Beats since the `since` (CLOCK_REALTIME) of the request, and the largest gap among them: the
   * downtime it saw. Realtime, because a restored container's monotonic clock hides the freeze.
   */
  readonly windowBeats: number;
  readonly maxGapNs: bigint;
  readonly maxGapEndTick: number;
  /** CLOCK_REALTIME of the beat that ended the largest gap: when the process ran again. */
  readonly maxGapEndRealNs: bigint;
  /**
   * With --touch, once armed: the pages read after the first freeze (0 until that pass is done), how
   * long each read took, the freeze that started the pass and when the process ran again after it.
   */
  readonly touch: { readonly pages: number; readonly p50Ns: number; readonly p99Ns: number; readonly maxNs: number; readonly totalNs: number; readonly freezeNs: number; readonly startedRealNs: bigint };
}

export function parseReport(text: string): WorkloadReport {
  const fields = new Map(
    text
      .trim()
      .split('\n')
      .map((line) => {
        const space = line.indexOf(' ');
        return [line.slice(0, space), line.slice(space + 1)] as const;
      }),
  );
  const field = (name: string): string => {
    const value = fields.get(name);
    if (value === undefined) throw new Error(`workload report lacks "${name}":\n${text}`);
    return value;
  };
  return {
    pid: Number(field('pid')),
    mib: Number(field('mib')),
    checksum: field('checksum'),
    tick: Number(field('tick')),
    monoNs: BigInt(field('mono_ns')),
    realNs: BigInt(field('real_ns')),
    windowBeats: Number(field('window_beats')),
    maxGapNs: BigInt(field('max_gap_ns')),
    maxGapEndTick: Number(field('max_gap_end_tick')),
    maxGapEndRealNs: BigInt(field('max_gap_end_real_ns')),
    touch: {
      pages: Number(field('touch_pages')),
      p50Ns: Number(field('touch_p50_ns')),
      p99Ns: Number(field('touch_p99_ns')),
      maxNs: Number(field('touch_max_ns')),
      totalNs: Number(field('touch_ns')),
      freezeNs: Number(field('touch_freeze_ns')),
      startedRealNs: BigInt(field('touch_started_real_ns')),
    },
  };
}

/** The arguments of `haul-workload report`, to run on this host or inside a container. */
export function reportArgs(dir: string, sinceNs: bigint = 0n): string[] {
  return ['report', '--dir', dir, '--since', sinceNs.toString(), '--timeout', '10'];
}

/** The checksum an intact workload of `mib` MiB reports, computed without one. */
export async function expectedChecksum(mib: number): Promise<string> {
  const { stdout } = await execFileAsync(WORKLOAD, ['checksum', '--mib', String(mib)]);
  return stdout.trim();
}

/** CLOCK_REALTIME now, the clock the workload measures gaps between its beats on. */
export function realtimeNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

/**
 * A workload on this host, in its own session (CRIU dumps a session leader whole). It is this
 * process's child, so Node reaps it the moment a dump kills it and its pid is free for the restore.
 */
export class LocalWorkload {
  private constructor(
    readonly dir: string,
    readonly pid: number,
    readonly exited: Promise<void>,
  ) {}

  /** `ownNetworkNamespace`: in a network namespace of its own (unshare execs the workload: the same pid). */
  static async start(dir: string, mib: number, options: { readonly ownNetworkNamespace?: boolean } = {}): Promise<LocalWorkload> {
    const command = [WORKLOAD, 'run', '--dir', dir, '--mib', String(mib)];
    const [program, ...args] = options.ownNetworkNamespace ? ['unshare', '--net', ...command] : command;
    const child: ChildProcess = spawn(program!, args, {
      detached: true,
      stdio: 'ignore',
    });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const deadline = Date.now() + 30_000;
    while (!existsSync(`${dir}/beat`)) {
      if (child.exitCode !== null) throw new Error(`haul-workload exited with ${child.exitCode} before its first beat`);
      if (Date.now() > deadline) throw new Error(`haul-workload wrote no beat in ${dir} within 30 s`);
      await sleep(20);
    }
    if (child.pid === undefined) throw new Error('haul-workload did not start');
    return new LocalWorkload(dir, child.pid, exited);
  }

  async report(sinceNs?: bigint): Promise<WorkloadReport> {
    return reportFrom(this.dir, sinceNs);
  }
}

/** Asks whichever workload beats in `dir` (restored ones included) for a report. */
/** The workload's report; `armTouch`: its --touch pass may run from now on, after the next freeze. */
export async function reportFrom(dir: string, sinceNs?: bigint, options: { readonly armTouch?: boolean } = {}): Promise<WorkloadReport> {
  const { stdout } = await execFileAsync(WORKLOAD, [...reportArgs(dir, sinceNs), ...(options.armTouch ? ['--arm-touch'] : [])]);
  return parseReport(stdout);
}

/** Kills the workload with this pid, if that pid is still a haul-workload (pids get reused). */
export function stopWorkload(pid: number): void {
  try {
    if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith(WORKLOAD)) process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}
