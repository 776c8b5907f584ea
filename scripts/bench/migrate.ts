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
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { DEFAULT_CRIU, acceptOne, runCriu, startCriu } from '../../src/criu/index.js';
import { realtimeNs, reportFrom, type WorkloadReport } from '../../test/support/workload.js';
import { endSecondHost } from '../../test/support/second-host.js';
import { ratio, spread, type Spread } from './spread.js';

const WORKLOAD = '/usr/local/bin/haul-workload';
const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const CRIU_ON_SECOND_HOST = join(REPO, 'test/support/criu-in-pid-namespace.sh');
const HAUL_CLI = join(REPO, 'dist/cli/haul.js');
const WORK = '/var/tmp/haul-bench-migrate';
const progress = (line: string): void => void process.stderr.write(`[migrate] ${line}\n`);

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
  downtimeMs: number;
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
/** The post-copy window: the workload's own clock says when it ran again, on the same machine's realtime as `lastPageAt` (ms). */
const windowMs = (report: WorkloadReport, lastPageAt: number): number => Math.max(0, Math.round(lastPageAt - Number(report.maxGapEndRealNs / 1_000_000n)));

/** The workload's report once its touch pass is done (it starts on the restore's first beat). */
async function touchedReport(dir: string, since: bigint): Promise<WorkloadReport> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const report = await reportFrom(dir, since);
    if (report.touch.pages > 0) return report;
    if (Date.now() > deadline) throw new Error(`the workload in ${dir} did not finish reading its memory within 120 s of the restore`);
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
  for (const pid of readFileSync(file, 'utf8').split('\n').filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {}
  }
}

function restoreOnSecondHost(work: string, destinationCriu: string, args: readonly string[]): void {
  writeFileSync(join(work, 'holders'), '', { flag: 'a' });
  execFileSync(CRIU_ON_SECOND_HOST, ['restore', ...args], { env: { ...process.env, HAUL_TEST_HOLDERS: join(work, 'holders'), HAUL_TEST_DESTINATION_CRIU: destinationCriu } });
}

const imageFiles = (dir: string): string[] => execFileSync('find', [dir, '-maxdepth', '1', '-type', 'f', '-name', '*.img'], { encoding: 'utf8' }).split('\n').filter(Boolean);

async function freePort(): Promise<number> {
  const listener = await acceptOne('127.0.0.1', 0);
  listener.close(); // CRIU takes the port
  return listener.port;
}

/**
 * CRIU alone, pre-copy. By default the dump ends the source as CRIU does; `holdSource` keeps it
 * stopped (--leave-stopped) until the restore is done, as a migration that must not lose the
 * process has to, and as haul does. On this VM that costs time too: memory the ended source just
 * freed is cheap for the restore to take, fresh memory costs the host's page faults.
 */
async function criuPreCopy(work: string, mib: number, placement: Placement, holdSource: boolean): Promise<Run> {
  const [source, destination] = [join(work, 'source'), join(work, 'destination')];
  mkdirSync(source, { recursive: true });
  mkdirSync(destination, { recursive: true });
  const pid = startWorkload(placement, join(work, 'w'), mib);
  const before = await reportFrom(join(work, 'w'));
  const port = await freePort();
  const pageServer = startCriu('page-server', ['--images-dir', destination, '--address', '127.0.0.1', '--port', String(port)], { logFile: join(work, 'ps.log'), statusFd: true, binary: criuFor(placement, 'destination') });
  await pageServer.ready;
  const since = realtimeNs();
  const started = Date.now();
  await runCriu('dump', ['-t', String(pid), '-D', source, '--page-server', '--address', '127.0.0.1', '--port', String(port), ...(holdSource ? ['--leave-stopped'] : [])], { logFile: join(work, 'dump.log'), binary: criuFor(placement, 'source') });
  await pageServer.exited;
  execFileSync('cp', ['-n', ...imageFiles(source), destination]);
  restoreOnSecondHost(work, criuFor(placement, 'destination'), ['-D', destination, '-d', '-o', join(work, 'restore.log')]);
  if (holdSource) process.kill(pid, 'SIGKILL');
  const totalMs = Date.now() - started;
  const after = await reportFrom(join(work, 'w'), since);
  killHolders(join(work, 'holders'));
  return { totalMs, downtimeMs: gapMs(after), intact: after.checksum === before.checksum && after.pid === before.pid };
}

/**
 * CRIU alone, lazy: the dump leaves its lazy page server running, `criu lazy-pages` on the
 * destination pulls from it directly and serves the lazy restore. The post-copy window ends when
 * the daemon has every page and exits.
 */
async function criuLazy(work: string, mib: number, placement: Placement, touch: Touch): Promise<Run> {
  const [source, destination] = [join(work, 'source'), join(work, 'destination')];
  mkdirSync(source, { recursive: true });
  mkdirSync(destination, { recursive: true });
  const pid = startWorkload(placement, join(work, 'w'), mib, touch);
  const before = await reportFrom(join(work, 'w'));
  const port = await freePort();
  const since = realtimeNs();
  const started = Date.now();
  const dump = startCriu('dump', ['-t', String(pid), '-D', source, '--lazy-pages', '--address', '127.0.0.1', '--port', String(port)], { logFile: join(work, 'dump.log'), statusFd: true, binary: criuFor(placement, 'source') });
  try {
    await dump.ready;
    execFileSync('cp', ['-n', ...imageFiles(source), destination]);
    const daemon = startCriu('lazy-pages', ['--page-server', '--address', '127.0.0.1', '--port', String(port), '-D', destination], { logFile: join(work, 'lazy-pages.log'), statusFd: true, cwd: destination, binary: criuFor(placement, 'destination') });
    await daemon.ready;
    const restoreStarted = Date.now();
    restoreOnSecondHost(work, criuFor(placement, 'destination'), ['-D', destination, '-d', '--lazy-pages', '-o', join(work, 'restore.log')]);
    const restored = Date.now();
    await daemon.exited;
    const complete = Date.now();
    await dump.exited;
    const after = await touchedReport(join(work, 'w'), since);
    return {
      totalMs: complete - started, downtimeMs: gapMs(after), windowMs: windowMs(after, complete), restoreMs: restored - restoreStarted,
      ...faultTimes(after), intact: after.checksum === before.checksum && after.pid === before.pid,
    };
  } finally {
    dump.child.kill('SIGKILL');
    killHolders(join(work, 'holders'));
  }
}

/**
 * haul as users run it: `haul cache --insecure` as the init of its own pid namespace (a second host
 * on loopback) and `haul migrate --insecure --json`, each its own process, so that each one's peak
 * RSS is its own. The cache's events are timed as they come: the post-copy window runs from its
 * restore to its last page.
 */
async function haul(work: string, mib: number, placement: Placement, touch?: Touch): Promise<Run> {
  mkdirSync(work, { recursive: true });
  const lazy = touch !== undefined;
  const [command, args] = onSide(placement, 'destination', 'unshare', ['--pid', '--fork', '--kill-child', '--mount-proc', process.execPath, HAUL_CLI, 'cache', '--listen', '127.0.0.1:0', '--dir', join(work, 'cache'), '--insecure']);
  const cache = spawn(command, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const lines = createInterface({ input: cache.stdout })[Symbol.asyncIterator]();
    const nextEvent = async (): Promise<{ kind: string; at: number; port?: number; peakRssMib?: number; error?: string }> => {
      const next = await lines.next();
      if (next.done) throw new Error('haul cache exited');
      return { ...JSON.parse(next.value as string), at: Date.now() };
    };
    const { port } = await nextEvent();
    const pid = startWorkload(placement, join(work, 'w'), mib, touch);
    const before = await reportFrom(join(work, 'w'));
    const since = realtimeNs();
    const started = Date.now();
    const events: Array<Promise<Awaited<ReturnType<typeof nextEvent>>>> = [];
    // the cache's events are read while the migration runs, so each is timed as it comes
    const reading = (async () => {
      for (;;) {
        const event = nextEvent();
        events.push(event);
        const { kind } = await event;
        if (kind === (lazy ? 'lazy-complete' : 'restored') || kind === 'failed') return;
      }
    })();
    const [migrateCommand, migrateArgs] = onSide(placement, 'source', process.execPath, [HAUL_CLI, 'migrate', String(pid), '--to', `127.0.0.1:${port}`, '--insecure', '--json', ...(lazy ? ['--lazy'] : [])]);
    const out = execFileSync(migrateCommand, migrateArgs, { encoding: 'utf8' });
    const totalMs = Date.now() - started;
    await reading;
    const seen = await Promise.all(events);
    const failed = seen.find((event) => event.kind === 'failed');
    if (failed) throw new Error(`haul cache: ${failed.error}`);
    const delivered = seen.find((event) => event.kind === 'pages-delivered');
    const last = seen[seen.length - 1]!;
    const summary = JSON.parse(out.trim().split('\n').pop()!) as { downtimeMs: number; peakRssMib: number };
    const after = lazy ? await touchedReport(join(work, 'w'), since) : await reportFrom(join(work, 'w'), since);
    return {
      totalMs, downtimeMs: gapMs(after), ...(lazy ? { windowMs: windowMs(after, delivered!.at), ...faultTimes(after) } : {}),
      proxyPeakRssMib: summary.peakRssMib, ...(last.peakRssMib !== undefined ? { cachePeakRssMib: last.peakRssMib } : {}),
      intact: after.checksum === before.checksum,
    };
  } finally {
    endSecondHost(cache); // its namespace, with the restored workload, goes with it
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
