/**
 * Process migration on this machine: haul pre-copy and haul lazy (through the link, TLS off,
 * destination restore in its own pid namespace) against CRIU alone (`criu dump --page-server` into `criu page-server`, then
 * `criu restore`), same workload sizes, same run. Prints one JSON document; the anchor is CRIU alone.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { ImageCache } from '../../proxy/image-cache.js';
import { migrateLazy, migratePreCopy } from '../../proxy/image-proxy.js';
import { acceptOne } from '../../src/criu/page-server/connection.js';
import { runCriu, startCriu } from '../../src/criu/run/criu-process.js';
import type { HostInfo } from '../../src/link/messages.js';
import { realtimeNs, reportFrom, type WorkloadReport } from '../../test/support/workload.js';

const WORKLOAD = '/usr/local/bin/haul-workload';
const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const CRIU_ON_SECOND_HOST = join(REPO, 'test/support/criu-in-pid-namespace.sh');
const host = (role: string): HostInfo => ({ criu_version: '4.1.1', page_size: 4096, architecture: process.arch, capabilities: [], haul_version: '0.1.0', role });
const progress = (line: string): void => void process.stderr.write(`[migrate] ${line}\n`);

const gapMs = (report: WorkloadReport): number => Math.round(Number(report.maxGapNs) / 1e6);
function killHolders(file: string): void {
  for (const pid of readFileSync(file, 'utf8').split('\n').filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {}
  }
}

async function criuAlone(work: string, mib: number) {
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
  await runCriu('dump', ['-t', String(pid), '-D', source, '--page-server', '--address', '127.0.0.1', '--port', String(port)], { logFile: join(work, 'dump.log') });
  await pageServer.exited;
  const dumped = Date.now();
  execFileSync('cp', ['-n', ...readdirFiles(source), destination]);
  writeFileSync(join(work, 'holders'), '');
  process.env['HAUL_TEST_HOLDERS'] = join(work, 'holders');
  execFileSync(CRIU_ON_SECOND_HOST, ['restore', '-D', destination, '-d', '-o', join(work, 'restore.log')]);
  const total = Date.now() - started;
  const after = await reportFrom(join(work, 'w'), since);
  killHolders(join(work, 'holders'));
  return { totalMs: total, dumpMs: dumped - started, downtimeMs: gapMs(after), intact: after.checksum === before.checksum && after.pid === before.pid };
}

function readdirFiles(dir: string): string[] {
  return execFileSync('find', [dir, '-maxdepth', '1', '-type', 'f', '-name', '*.img'], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

async function haul(work: string, mib: number, lazy: boolean) {
  mkdirSync(work, { recursive: true });
  writeFileSync(join(work, 'holders'), '');
  process.env['HAUL_TEST_HOLDERS'] = join(work, 'holders');
  const cache = await ImageCache.start({ address: '127.0.0.1', port: 0, dir: join(work, 'cache'), insecure: true, host: host('destination'), criuBinary: CRIU_ON_SECOND_HOST });
  const pid = Number(execFileSync(WORKLOAD, ['start', '--dir', join(work, 'w'), '--mib', String(mib)], { encoding: 'utf8' }));
  const before = await reportFrom(join(work, 'w'));
  const since = realtimeNs();
  const started = Date.now();
  const migrate = lazy ? migrateLazy : migratePreCopy;
  const summary = await migrate({ pid, to: `ws://127.0.0.1:${cache.port}`, insecure: true, host: host('source'), workDir: join(work, 'source') });
  const total = Date.now() - started;
  const after = await reportFrom(join(work, 'w'), since);
  await cache.close();
  killHolders(join(work, 'holders'));
  return { totalMs: total, dumpMs: summary.dumpMs, downtimeMs: gapMs(after), intact: after.checksum === before.checksum };
}

async function main(): Promise<void> {
  const options = new Command('migrate').option('--sizes <list>', 'workload sizes in MiB', '64,256').parse().opts<{ sizes: string }>();
  const root = '/var/tmp/haul-bench-migrate';
  const results = [];
  for (const mib of options.sizes.split(',').map(Number)) {
    rmSync(root, { recursive: true, force: true });
    const alone = await criuAlone(join(root, `alone-${mib}`), mib);
    progress(`${mib} MiB CRIU alone: ${alone.totalMs} ms, downtime ${alone.downtimeMs} ms`);
    const preCopy = await haul(join(root, `haul-${mib}`), mib, false);
    progress(`${mib} MiB haul pre-copy: ${preCopy.totalMs} ms, downtime ${preCopy.downtimeMs} ms`);
    const lazy = await haul(join(root, `lazy-${mib}`), mib, true);
    progress(`${mib} MiB haul lazy: ${lazy.totalMs} ms, downtime ${lazy.downtimeMs} ms`);
    const ratio = (a: number, b: number): number => Math.round((a / b) * 100) / 100;
    results.push({
      mib,
      criuAlone: alone,
      haulPreCopy: preCopy,
      haulLazy: lazy,
      preCopyTotalRatio: ratio(preCopy.totalMs, alone.totalMs),
      lazyDowntimeRatio: ratio(lazy.downtimeMs, alone.downtimeMs),
    });
  }
  rmSync(root, { recursive: true, force: true });
  process.stdout.write(`${JSON.stringify({
    benchmark: 'migrate',
    description: 'one machine: haul pre-copy over the link (insecure loopback) vs CRIU alone; destination restores in its own pid namespace',
    date: new Date().toISOString(),
    target: { preCopyTotalRatio: 1.1, lazyDowntimeRatioAt1GiB: 0.2 },
    results,
    notMeasuredYet: ['peak RSS of proxy and cache (they share this process here)', '1 GiB unless asked for with --sizes'],
  }, null, 2)}\n`);
}

main().catch((error: unknown) => {
  progress(`failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
});
