/**
 * Process migration on this machine: haul pre-copy and haul lazy (the haul commands, link on
 * loopback without TLS, destination restoring in its own pid namespace) against CRIU alone
 * (`criu dump --page-server` into `criu page-server`, then `criu restore`), same workload sizes,
 * same run. Prints one JSON document; the anchor is CRIU alone.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { acceptOne, runCriu, startCriu } from '../../src/criu/index.js';
import { realtimeNs, reportFrom, type WorkloadReport } from '../../test/support/workload.js';
import { endSecondHost } from '../../test/support/second-host.js';

const WORKLOAD = '/usr/local/bin/haul-workload';
const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const CRIU_ON_SECOND_HOST = join(REPO, 'test/support/criu-in-pid-namespace.sh');
const HAUL_CLI = join(REPO, 'dist/cli/haul.js');
const progress = (line: string): void => void process.stderr.write(`[migrate] ${line}\n`);

const gapMs = (report: WorkloadReport): number => Math.round(Number(report.maxGapNs) / 1e6);
function killHolders(file: string): void {
  for (const pid of readFileSync(file, 'utf8').split('\n').filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {}
  }
}

/**
 * CRIU alone. By default the dump ends the source as CRIU does; `holdSource` keeps it stopped
 * (--leave-stopped) until the restore is done, as a migration that must not lose the process has
 * to, and as haul does. On this VM the difference is not only safety: memory the killed source just
 * freed is cheap for the restore to take, while fresh memory costs host page faults (virtio
 * balloon/free page reporting), about 2 s per GiB here.
 */
async function criuAlone(work: string, mib: number, holdSource: boolean) {
  const source = join(work, 'source');
  const destination = join(work, 'destination');
  mkdirSync(source, { recursive: true });
  mkdirSync(destination, { recursive: true });
  const pid = Number(execFileSync(WORKLOAD, ['start', '--dir', join(work, 'w'), '--mib', String(mib)], { encoding: 'utf8' }));
  const before = await reportFrom(join(work, 'w'));
  const listener = await acceptOne('127.0.0.1', 0);
  const port = listener.port;
  listener.close(); // criu page-server takes the port
  const pageServer = startCriu('page-server', ['--images-dir', destination, '--address', '127.0.0.1', '--port', String(port)], { logFile: join(work, 'ps.log'), statusFd: true });
  await pageServer.ready;
  const since = realtimeNs();
  const started = Date.now();
  await runCriu('dump', ['-t', String(pid), '-D', source, '--page-server', '--address', '127.0.0.1', '--port', String(port), ...(holdSource ? ['--leave-stopped'] : [])], { logFile: join(work, 'dump.log') });
  await pageServer.exited;
  const dumped = Date.now();
  execFileSync('cp', ['-n', ...readdirFiles(source), destination]);
  writeFileSync(join(work, 'holders'), '');
  process.env['HAUL_TEST_HOLDERS'] = join(work, 'holders');
  execFileSync(CRIU_ON_SECOND_HOST, ['restore', '-D', destination, '-d', '-o', join(work, 'restore.log')]);
  if (holdSource) process.kill(pid, 'SIGKILL');
  const total = Date.now() - started;
  const after = await reportFrom(join(work, 'w'), since);
  killHolders(join(work, 'holders'));
  return { totalMs: total, dumpMs: dumped - started, downtimeMs: gapMs(after), intact: after.checksum === before.checksum && after.pid === before.pid };
}

function readdirFiles(dir: string): string[] {
  return execFileSync('find', [dir, '-maxdepth', '1', '-type', 'f', '-name', '*.img'], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

/**
 * haul as users run it: `haul cache --insecure` as the init of its own pid namespace (a second host
 * on loopback) and `haul migrate --insecure --json`, each its own process, so that each one's peak
 * RSS is its own.
 */
async function haul(work: string, mib: number, lazy: boolean) {
  mkdirSync(work, { recursive: true });
  const cache = spawn('unshare', ['--pid', '--fork', '--kill-child', '--mount-proc', process.execPath, HAUL_CLI, 'cache', '--listen', '127.0.0.1:0', '--dir', join(work, 'cache'), '--insecure'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    const lines = createInterface({ input: cache.stdout })[Symbol.asyncIterator]();
    const nextLine = async (): Promise<{ kind: string; port?: number; peakRssMib?: number; error?: string }> => {
      const next = await lines.next();
      if (next.done) throw new Error('haul cache exited');
      return JSON.parse(next.value as string);
    };
    const { port } = await nextLine();
    const pid = Number(execFileSync(WORKLOAD, ['start', '--dir', join(work, 'w'), '--mib', String(mib)], { encoding: 'utf8' }));
    const before = await reportFrom(join(work, 'w'));
    const since = realtimeNs();
    const started = Date.now();
    const out = execFileSync(process.execPath, [HAUL_CLI, 'migrate', String(pid), '--to', `127.0.0.1:${port}`, '--insecure', '--json', ...(lazy ? ['--lazy'] : [])], { encoding: 'utf8' });
    const total = Date.now() - started;
    const summary = JSON.parse(out.trim().split('\n').pop()!) as { dumpMs: number; downtimeMs: number; peakRssMib: number };
    let last;
    do last = await nextLine();
    while (last.kind !== (lazy ? 'lazy-complete' : 'restored') && last.kind !== 'failed');
    if (last.kind === 'failed') throw new Error(`haul cache: ${last.error}`);
    const after = await reportFrom(join(work, 'w'), since);
    return {
      totalMs: total, dumpMs: summary.dumpMs, downtimeMs: gapMs(after), haulDowntimeMs: summary.downtimeMs,
      proxyPeakRssMib: summary.peakRssMib, cachePeakRssMib: last.peakRssMib, intact: after.checksum === before.checksum,
    };
  } finally {
    endSecondHost(cache); // its namespace, with the restored workload, goes with it
  }
}

async function main(): Promise<void> {
  const options = new Command('migrate').option('--sizes <list>', 'workload sizes in MiB', '64,256,1024').parse().opts<{ sizes: string }>();
  const root = '/var/tmp/haul-bench-migrate';
  const results = [];
  const ratio = (a: number, b: number): number => Math.round((a / b) * 100) / 100;
  for (const mib of options.sizes.split(',').map(Number)) {
    const run = async <T>(label: string, measure: () => Promise<T & { totalMs: number; downtimeMs: number }>): Promise<T & { totalMs: number; downtimeMs: number }> => {
      rmSync(root, { recursive: true, force: true });
      execFileSync('sync'); // the page cache's writeback of one run must not slow the next
      const result = await measure();
      progress(`${mib} MiB ${label}: ${result.totalMs} ms, downtime ${result.downtimeMs} ms`);
      return result;
    };
    const alone = await run('CRIU alone', () => criuAlone(join(root, 'alone'), mib, false));
    const aloneHeld = await run('CRIU alone, source held', () => criuAlone(join(root, 'alone-held'), mib, true));
    const preCopy = await run('haul pre-copy', () => haul(join(root, 'pre-copy'), mib, false));
    const lazy = await run('haul lazy', () => haul(join(root, 'lazy'), mib, true));
    results.push({
      mib, criuAlone: alone, criuAloneSourceHeld: aloneHeld, haulPreCopy: preCopy, haulLazy: lazy,
      preCopyTotalRatio: ratio(preCopy.totalMs, alone.totalMs), preCopyTotalRatioSourceHeld: ratio(preCopy.totalMs, aloneHeld.totalMs),
      lazyDowntimeRatio: ratio(lazy.downtimeMs, alone.downtimeMs), lazyDowntimeRatioSourceHeld: ratio(lazy.downtimeMs, aloneHeld.downtimeMs),
    });
  }
  rmSync(root, { recursive: true, force: true });
  const smallest = results[0];
  const largest = results[results.length - 1];
  process.stdout.write(`${JSON.stringify({
    benchmark: 'migrate',
    description: 'one machine: haul migrate/haul cache (insecure loopback, cache in its own pid namespace) vs CRIU alone (criu dump --page-server into criu page-server, then criu restore; also with the source held stopped until the restore, as haul holds it); downtime is the longest gap the workload itself saw',
    date: new Date().toISOString(),
    target: { preCopyTotalRatio: 1.1, lazyDowntimeRatioAt1GiB: 0.2, lazyDowntimeGrowth64MiBTo1GiB: 1.5, peakRssMib: 150 },
    results,
    lazyDowntimeGrowth: smallest && largest && smallest !== largest ? ratio(largest.haulLazy.downtimeMs, smallest.haulLazy.downtimeMs) : null,
    peakRssMib: {
      proxy: Math.max(...results.flatMap((r) => [r.haulPreCopy.proxyPeakRssMib, r.haulLazy.proxyPeakRssMib])),
      cache: Math.max(...results.flatMap((r) => [r.haulPreCopy.cachePeakRssMib ?? 0, r.haulLazy.cachePeakRssMib ?? 0])),
    },
  }, null, 2)}\n`);
}

main().catch((error: unknown) => {
  progress(`failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
});
