/**
 * Process migration on this machine, haul against CRIU alone, same workloads, same run:
 *
 * - pre-copy: `haul migrate` into `haul cache` (link on loopback without TLS, the cache restoring
 *   in its own pid namespace) against `criu dump --page-server` into `criu page-server`, then
 *   `criu restore`, once with the source ended by the dump as CRIU does and once held stopped until
 *   the restore, as haul holds it;
 * - lazy: `haul migrate --lazy` against `criu dump --lazy-pages` served straight to `criu
 *   lazy-pages` and a lazy `criu restore`, each with a workload that reads all of its memory right
 *   after the restore and one that reads 5% of it, timing every read (the fault service time).
 *
 * Each case runs `--repetitions` times, the cases of one repetition one after another so that the
 * machine's drift spreads over all of them; unpinned, and with each side pinned to its own core
 * (source: workload, dump, proxy on CPU 0; destination: page server, lazy-pages, restore, cache on
 * CPU 1), as two hosts would have them. Prints one JSON document: every run, each case's median
 * and spread, and haul's ratios to its anchor.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { Command } from 'commander';
import { DEFAULT_CRIU, acceptOne, runCriu, startCriu } from '../../src/criu/index.js';
import { realtimeNs, reportFrom, type WorkloadReport } from '../../test/support/workload.js';
import { CRIU_ON_SECOND_HOST, endSecondHost } from '../../test/support/second-host.js';
import { HAUL_COMMAND } from '../../test/support/build-cli.js';
import { ratio, spread, type Spread } from './spread.js';

const WORKLOAD = '/usr/local/bin/haul-workload';
const WORK = '/var/tmp/haul-bench-migrate';
const progress = (line: string): void => void process.stderr.write(`[migrate] ${line}\n`);
const execFileAsync = promisify(execFile);

export type Placement = 'unpinned' | 'pinned';
type Side = 'source' | 'destination';
const CORE: Record<Side, string> = { source: '0', destination: '1' };

/** How a case's lazy workload reads its memory after the restore: all of it, or 5%. */
const TOUCH = { all: 100, some: 5 } as const;
type Touch = keyof typeof TOUCH;

export const CASES = ['criu-pre-copy', 'criu-pre-copy-held', 'haul-pre-copy', 'criu-lazy-all', 'criu-lazy-5pct', 'haul-lazy-all', 'haul-lazy-5pct'] as const;
export type CaseName = (typeof CASES)[number];

/** One run of one case. Times in ms; the fault service times the workload saw in µs. */
interface Run {
  totalMs: number;
  /** The freeze the workload saw: the longest gap between its beats (lazy: the gap that started its read pass). */
  downtimeMs: number;
  /** The longest gap between its beats, a lazy run's reads that waited included. */
  stallMs: number;
  /** Lazy: from the restored process running again (its first beat after the freeze) to the last page on the destination. */
  windowMs?: number;
  /** Lazy: how long `criu restore` (CRIU alone) or the destination's restore step took. */
  restoreMs?: number;
  proxyPeakRssMib?: number;
  cachePeakRssMib?: number;
  faultP50Us?: number;
  faultP99Us?: number;
  faultMaxUs?: number;
  /** Lazy: how long the workload's pass over its memory took, from its first read after the restore. */
  touchPassMs?: number;
  intact: boolean;
}

/** A command on one side: as it is, or pinned to that side's core. */
function onSide(placement: Placement, side: Side, command: string, args: readonly string[]): [string, string[]] {
  return placement === 'pinned' ? ['taskset', ['-c', CORE[side], command, ...args]] : [command, [...args]];
}

/** The CRIU binary a side runs: CRIU itself, or a wrapper that pins it to the side's core first. */
function criuFor(placement: Placement, side: Side): string {
  if (placement === 'unpinned') return DEFAULT_CRIU;
  const wrapper = join(WORK, `criu-on-${side}`);
  writeFileSync(wrapper, `#!/bin/sh\nexec taskset -c ${CORE[side]} ${DEFAULT_CRIU} "$@"\n`);
  chmodSync(wrapper, 0o755);
  return wrapper;
}

function startWorkload(placement: Placement, dir: string, mib: number, touch?: Touch): number {
  const [command, args] = onSide(placement, 'source', WORKLOAD, ['start', '--dir', dir, '--mib', String(mib), ...(touch ? ['--touch', String(TOUCH[touch])] : [])]);
  return Number(execFileSync(command, args, { encoding: 'utf8' }));
}

const gapMs = (report: WorkloadReport): number => Math.round(Number(report.maxGapNs) / 1e6);

/** The workload's report once its touch pass is done (it starts on the restore's first beat). */
async function touchedReport(dir: string, since: bigint): Promise<WorkloadReport> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const report = await reportFrom(dir, since);
    if (report.touch.pages > 0) return report;
    if (Date.now() > deadline) throw new Error(`the workload in ${dir} did not finish reading its memory within 60 s of the restore`);
    await sleep(100);
  }
}

const faultTimes = (report: WorkloadReport): Pick<Run, 'faultP50Us' | 'faultP99Us' | 'faultMaxUs' | 'touchPassMs'> => ({
  faultP50Us: Math.round(report.touch.p50Ns / 100) / 10,
  faultP99Us: Math.round(report.touch.p99Ns / 100) / 10,
  faultMaxUs: Math.round(report.touch.maxNs / 100) / 10,
  touchPassMs: Math.round(report.touch.totalNs / 1e6),
});

/** The restored tree lives in a pid namespace of its own, held by an init whose pid lands in `holders`. */
function killHolders(file: string): void {
  if (!existsSync(file)) return;
  for (const pid of readFileSync(file, 'utf8').split('\n').filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {}
  }
}

function restoreOnSecondHost(work: string, destinationCriu: string, args: readonly string[], timeoutMs: number): void {
  writeFileSync(join(work, 'holders'), '', { flag: 'a' });
  execFileSync(CRIU_ON_SECOND_HOST, ['restore', ...args], { timeout: timeoutMs, env: { ...process.env, HAUL_TEST_HOLDERS: join(work, 'holders'), HAUL_TEST_DESTINATION_CRIU: destinationCriu } });
}

const imageFiles = (dir: string): string[] => execFileSync('find', [dir, '-maxdepth', '1', '-type', 'f', '-name', '*.img'], { encoding: 'utf8' }).split('\n').filter(Boolean);

async function freePort(): Promise<number> {
  const listener = await acceptOne('127.0.0.1', 0);
  listener.close(); // CRIU takes the port
  return listener.port;
}

/** Ends the workload (the source copy, where a run left it running) and the namespaces holding restored copies. */
function cleanUp(work: string, sourcePid: number | undefined): void {
  if (sourcePid !== undefined) {
    try {
      process.kill(sourcePid, 'SIGKILL');
    } catch {}
  }
  try {
    killHolders(join(work, 'holders'));
  } catch {}
}

/** A step that may hang (a CRIU waiting for a peer that failed): it fails after `ms` instead. */
async function within<T>(ms: number, what: string, step: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms / 1000} s`)), ms)));
  try {
    return await Promise.race([step, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** How long a run may take: generous, but a hung run must not hold up the benchmark for good. */
const runDeadlineMs = (mib: number): number => 60_000 + mib * 60;

/**
 * CRIU alone, pre-copy. By default the dump ends the source as CRIU does; `holdSource` keeps it
 * stopped (--leave-stopped) until the restore is done, as a migration that must not lose the
 * process has to, and as haul does. On this VM that costs time too: memory the ended source just
 * freed is cheap for the restore to take, fresh memory costs the host's page faults. The total
 * runs from starting the page server, as haul's from starting `haul migrate`.
 */
async function criuPreCopy(work: string, mib: number, placement: Placement, holdSource: boolean): Promise<Run> {
  const [source, destination] = [join(work, 'source'), join(work, 'destination')];
  mkdirSync(source, { recursive: true });
  mkdirSync(destination, { recursive: true });
  const pid = startWorkload(placement, join(work, 'w'), mib);
  let pageServer: ReturnType<typeof startCriu> | undefined;
  try {
    const before = await reportFrom(join(work, 'w'));
    const port = await freePort();
    const since = realtimeNs();
    const started = Date.now();
    pageServer = startCriu('page-server', ['--images-dir', destination, '--address', '127.0.0.1', '--port', String(port)], { logFile: join(work, 'ps.log'), statusFd: true, binary: criuFor(placement, 'destination') });
    await within(30_000, 'criu page-server start', pageServer.ready);
    const deadline = runDeadlineMs(mib);
    await within(deadline, 'criu dump', runCriu('dump', ['-t', String(pid), '-D', source, '--page-server', '--address', '127.0.0.1', '--port', String(port), ...(holdSource ? ['--leave-stopped'] : [])], { logFile: join(work, 'dump.log'), binary: criuFor(placement, 'source') }));
    await within(deadline, 'criu page-server', pageServer.exited);
    execFileSync('cp', ['-n', ...imageFiles(source), destination]);
    restoreOnSecondHost(work, criuFor(placement, 'destination'), ['-D', destination, '-d', '-o', join(work, 'restore.log')], deadline);
    if (holdSource) process.kill(pid, 'SIGKILL');
    const totalMs = Date.now() - started;
    const after = await reportFrom(join(work, 'w'), since);
    return { totalMs, downtimeMs: gapMs(after), stallMs: gapMs(after), intact: after.checksum === before.checksum && after.pid === before.pid };
  } finally {
    pageServer?.child.kill('SIGKILL');
    cleanUp(work, pid);
  }
}

/**
 * A lazy run's downtime and window, from the workload's touch pass: the freeze that started it, and
 * from the moment the process ran again to `lastPageAt` (ms, this machine's realtime).
 */
function lazyFigures(report: WorkloadReport, lastPageAt: number): Pick<Run, 'downtimeMs' | 'windowMs'> {
  return {
    downtimeMs: Math.round(report.touch.freezeNs / 1e6),
    windowMs: Math.round(lastPageAt - Number(report.touch.startedRealNs / 1_000_000n)),
  };
}

/**
 * CRIU alone, lazy: the dump leaves its lazy page server running, `criu lazy-pages` on the
 * destination pulls from it directly and serves the lazy restore. The last page is there when the
 * daemon exits.
 */
async function criuLazy(work: string, mib: number, placement: Placement, touch: Touch): Promise<Run> {
  const [source, destination] = [join(work, 'source'), join(work, 'destination')];
  mkdirSync(source, { recursive: true });
  mkdirSync(destination, { recursive: true });
  const pid = startWorkload(placement, join(work, 'w'), mib, touch);
  let dump: ReturnType<typeof startCriu> | undefined;
  let daemon: ReturnType<typeof startCriu> | undefined;
  try {
    const before = await reportFrom(join(work, 'w'), undefined, { armTouch: true });
    const port = await freePort();
    const since = realtimeNs();
    const started = Date.now();
    const deadline = runDeadlineMs(mib);
    dump = startCriu('dump', ['-t', String(pid), '-D', source, '--lazy-pages', '--address', '127.0.0.1', '--port', String(port)], { logFile: join(work, 'dump.log'), statusFd: true, binary: criuFor(placement, 'source') });
    await within(deadline, 'criu dump --lazy-pages', dump.ready);
    execFileSync('cp', ['-n', ...imageFiles(source), destination]);
    daemon = startCriu('lazy-pages', ['--page-server', '--address', '127.0.0.1', '--port', String(port), '-D', destination], { logFile: join(work, 'lazy-pages.log'), statusFd: true, cwd: destination, binary: criuFor(placement, 'destination') });
    await within(30_000, 'criu lazy-pages start', daemon.ready);
    const restoreStarted = Date.now();
    restoreOnSecondHost(work, criuFor(placement, 'destination'), ['-D', destination, '-d', '--lazy-pages', '-o', join(work, 'restore.log')], deadline);
    const restored = Date.now();
    await within(deadline, 'criu lazy-pages', daemon.exited);
    const complete = Date.now();
    await within(deadline, 'criu dump --lazy-pages', dump.exited);
    const after = await touchedReport(join(work, 'w'), since);
    return {
      totalMs: complete - started, ...lazyFigures(after, complete), stallMs: gapMs(after), restoreMs: restored - restoreStarted,
      ...faultTimes(after), intact: after.checksum === before.checksum && after.pid === before.pid,
    };
  } finally {
    dump?.child.kill('SIGKILL');
    daemon?.child.kill('SIGKILL');
    cleanUp(work, pid);
  }
}

interface CacheEvent {
  readonly kind: string;
  readonly at: number;
  readonly port?: number;
  readonly peakRssMib?: number;
  readonly error?: string;
}

/** Where `haul cache` stops for good: its last word on a migration. */
const LAST_EVENTS = new Set(['restored', 'lazy-complete', 'failed', 'in-doubt']);

/**
 * haul as users run it: `haul cache --insecure` as the init of its own pid namespace (a second host
 * on loopback) and `haul migrate --insecure --json`, each its own process, so that each one's peak
 * RSS is its own. `haul migrate` runs beside this process's event loop, which times the cache's
 * events as they come: the last page is there when the cache says pages-delivered.
 */
async function haul(work: string, mib: number, placement: Placement, touch?: Touch): Promise<Run> {
  mkdirSync(work, { recursive: true });
  const lazy = touch !== undefined;
  const [command, args] = onSide(placement, 'destination', 'unshare', ['--pid', '--fork', '--kill-child', '--mount-proc', process.execPath, ...HAUL_COMMAND, 'cache', '--listen', '127.0.0.1:0', '--dir', join(work, 'cache'), '--insecure']);
  const cache = spawn(command, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let pid: number | undefined;
  try {
    const events: CacheEvent[] = [];
    const waiters: Array<() => void> = [];
    createInterface({ input: cache.stdout }).on('line', (line) => {
      events.push({ ...(JSON.parse(line) as Omit<CacheEvent, 'at'>), at: Date.now() });
      waiters.splice(0).forEach((wake) => wake());
    });
    const event = async (accept: (kind: string) => boolean): Promise<CacheEvent> => {
      for (;;) {
        const found = events.find((e) => accept(e.kind));
        if (found) return found;
        if (cache.exitCode !== null) throw new Error('haul cache exited');
        await new Promise<void>((resolve) => waiters.push(resolve));
      }
    };
    const { port } = await within(30_000, 'haul cache start', event((kind) => kind === 'listening'));
    pid = startWorkload(placement, join(work, 'w'), mib, touch);
    const before = await reportFrom(join(work, 'w'), undefined, { armTouch: lazy });
    const since = realtimeNs();
    const started = Date.now();
    const deadline = runDeadlineMs(mib);
    const [migrateCommand, migrateArgs] = onSide(placement, 'source', process.execPath, [...HAUL_COMMAND, 'migrate', String(pid), '--to', `127.0.0.1:${port}`, '--insecure', '--json', ...(lazy ? ['--lazy'] : [])]);
    const { stdout } = await within(deadline, 'haul migrate', execFileAsync(migrateCommand, migrateArgs, { encoding: 'utf8' }));
    const totalMs = Date.now() - started;
    const last = await within(deadline, 'haul cache', event((kind) => (lazy ? kind !== 'restored' : true) && LAST_EVENTS.has(kind)));
    if (last.kind === 'failed' || last.kind === 'in-doubt') throw new Error(`haul cache: ${last.kind}: ${last.error}`);
    const summary = JSON.parse(stdout.trim().split('\n').pop()!) as { downtimeMs: number; peakRssMib: number };
    const after = lazy ? await touchedReport(join(work, 'w'), since) : await reportFrom(join(work, 'w'), since);
    const delivered = events.find((e) => e.kind === 'pages-delivered');
    return {
      totalMs, ...(lazy ? { ...lazyFigures(after, delivered!.at), ...faultTimes(after) } : { downtimeMs: gapMs(after) }), stallMs: gapMs(after),
      proxyPeakRssMib: summary.peakRssMib, ...(last.peakRssMib !== undefined ? { cachePeakRssMib: last.peakRssMib } : {}),
      intact: after.checksum === before.checksum,
    };
  } finally {
    endSecondHost(cache); // its namespace, with the restored workload, goes with it
    cleanUp(work, pid);
  }
}

function measure(name: CaseName, work: string, mib: number, placement: Placement): Promise<Run> {
  switch (name) {
    case 'criu-pre-copy': return criuPreCopy(work, mib, placement, false);
    case 'criu-pre-copy-held': return criuPreCopy(work, mib, placement, true);
    case 'haul-pre-copy': return haul(work, mib, placement);
    case 'criu-lazy-all': return criuLazy(work, mib, placement, 'all');
    case 'criu-lazy-5pct': return criuLazy(work, mib, placement, 'some');
    case 'haul-lazy-all': return haul(work, mib, placement, 'all');
    case 'haul-lazy-5pct': return haul(work, mib, placement, 'some');
  }
}

export interface CaseResult {
  readonly name: CaseName;
  readonly placement: Placement;
  readonly mib: number;
  readonly runs: readonly Run[];
  readonly totalMs: Spread;
  readonly downtimeMs: Spread;
  readonly stallMs: Spread;
  readonly throughputMBps: Spread;
  readonly windowMs?: Spread;
  readonly restoreMs?: Spread;
  readonly proxyPeakRssMib?: Spread;
  readonly cachePeakRssMib?: Spread;
  readonly faultP50Us?: Spread;
  readonly faultP99Us?: Spread;
  readonly faultMaxUs?: Spread;
  readonly touchPassMs?: Spread;
  readonly allIntact: boolean;
}

function summarise(name: CaseName, placement: Placement, mib: number, runs: Run[]): CaseResult {
  const optional = (key: 'windowMs' | 'restoreMs' | 'proxyPeakRssMib' | 'cachePeakRssMib' | 'faultP50Us' | 'faultP99Us' | 'faultMaxUs' | 'touchPassMs'): Partial<CaseResult> => {
    const values = runs.map((run) => run[key]).filter((value): value is number => value !== undefined);
    return values.length ? { [key]: spread(values) } : {};
  };
  return {
    name, placement, mib, runs,
    totalMs: spread(runs.map((run) => run.totalMs)),
    downtimeMs: spread(runs.map((run) => run.downtimeMs)),
    stallMs: spread(runs.map((run) => run.stallMs)),
    throughputMBps: spread(runs.map((run) => (mib * 1.048576) / (run.totalMs / 1000))),
    ...optional('windowMs'), ...optional('restoreMs'), ...optional('proxyPeakRssMib'), ...optional('cachePeakRssMib'), ...optional('faultP50Us'), ...optional('faultP99Us'), ...optional('faultMaxUs'), ...optional('touchPassMs'),
    allIntact: runs.every((run) => run.intact),
  };
}

/** haul beside its anchors, per placement and size: medians divided. */
function comparisons(cases: readonly CaseResult[]) {
  const find = (name: CaseName, placement: Placement, mib: number): CaseResult | undefined => cases.find((c) => c.name === name && c.placement === placement && c.mib === mib);
  const keys = [...new Set(cases.map((c) => `${c.placement}:${c.mib}`))];
  return keys.map((key) => {
    const [placement, size] = key.split(':') as [Placement, string];
    const mib = Number(size);
    const get = (name: CaseName) => find(name, placement, mib);
    return {
      placement, mib,
      preCopyTotalVsCriuHeld: ratio(get('haul-pre-copy')?.totalMs.median, get('criu-pre-copy-held')?.totalMs.median),
      preCopyTotalVsCriu: ratio(get('haul-pre-copy')?.totalMs.median, get('criu-pre-copy')?.totalMs.median),
      lazyWindowVsCriu: ratio(get('haul-lazy-all')?.windowMs?.median, get('criu-lazy-all')?.windowMs?.median),
      lazyWindowVsCriu5pct: ratio(get('haul-lazy-5pct')?.windowMs?.median, get('criu-lazy-5pct')?.windowMs?.median),
      lazyDowntimeVsCriu: ratio(get('haul-lazy-all')?.downtimeMs.median, get('criu-lazy-all')?.downtimeMs.median),
      lazyDowntimeVsCriuPreCopyHeld: ratio(get('haul-lazy-all')?.downtimeMs.median, get('criu-pre-copy-held')?.downtimeMs.median),
      faultP99VsCriu5pct: ratio(get('haul-lazy-5pct')?.faultP99Us?.median, get('criu-lazy-5pct')?.faultP99Us?.median),
    };
  });
}

async function main(): Promise<void> {
  const options = new Command('migrate')
    .option('--sizes <list>', 'workload sizes in MiB', '64,256,1024,2048')
    .option('--repetitions <n>', 'runs of every case', (v) => Number.parseInt(v, 10), 5)
    .option('--placements <list>', 'unpinned, pinned (each side on its own core), or both', 'unpinned,pinned')
    .option('--cases <list>', `which cases (${CASES.join(', ')})`, CASES.join(','))
    .parse()
    .opts<{ sizes: string; repetitions: number; placements: string; cases: string }>();
  const list = (value: string): string[] => value.split(',').map((v) => v.trim()).filter(Boolean);
  const sizes = list(options.sizes).map(Number);
  const placements = list(options.placements) as Placement[];
  const names = list(options.cases) as CaseName[];
  if (sizes.some((mib) => !(mib >= 1)) || !(options.repetitions >= 1) || placements.some((p) => p !== 'unpinned' && p !== 'pinned') || names.some((n) => !CASES.includes(n))) {
    throw new Error(`--sizes and --repetitions must be positive, --placements unpinned and/or pinned, --cases some of ${CASES.join(', ')}`);
  }
  if (placements.includes('pinned') && Number(execFileSync('nproc', { encoding: 'utf8' })) < 2) throw new Error('pinning each side to its own core takes two cores');
  const results: CaseResult[] = [];
  for (const placement of placements) {
    for (const mib of sizes) {
      const runs = new Map<CaseName, Run[]>(names.map((name) => [name, []]));
      for (let repetition = 1; repetition <= options.repetitions; repetition++) {
        for (const name of names) {
          rmSync(WORK, { recursive: true, force: true });
          mkdirSync(WORK, { recursive: true });
          execFileSync('sync'); // the page cache's writeback of one run must not slow the next
          const run = await measure(name, join(WORK, name), mib, placement);
          if (!run.intact) throw new Error(`${name} at ${mib} MiB (${placement}): the workload did not come back intact`);
          progress(`${placement} ${mib} MiB ${name} #${repetition}: ${run.totalMs} ms, downtime ${run.downtimeMs} ms${run.windowMs !== undefined ? `, window ${run.windowMs} ms` : ''}${run.faultP99Us !== undefined ? `, fault p50/p99 ${run.faultP50Us}/${run.faultP99Us} µs` : ''}`);
          runs.get(name)!.push(run);
        }
      }
      for (const name of names) results.push(summarise(name, placement, mib, runs.get(name)!));
    }
  }
  rmSync(WORK, { recursive: true, force: true });
  process.stdout.write(`${JSON.stringify({
    benchmark: 'migrate',
    description: 'one machine standing for two hosts: haul migrate into haul cache (insecure loopback, cache in its own pid namespace) against CRIU alone (pre-copy: criu dump --page-server into criu page-server then criu restore, the source ended or held; lazy: criu dump --lazy-pages served to criu lazy-pages); downtime is the longest gap the workload itself saw, the window from the restored process running to its last page',
    date: new Date().toISOString(),
    repetitions: options.repetitions,
    pinning: { source: `CPU ${CORE.source}`, destination: `CPU ${CORE.destination}` },
    cases: results,
    comparisons: comparisons(results),
  }, null, 2)}\n`);
}

main().catch((error: unknown) => {
  progress(`failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
});
