/**
 * `npm run bench`: every benchmark under scripts/bench/ in one go, on this machine, each in its own
 * process (its JSON on stdout), then bench/results.json, the pictures in bench/ and BENCHMARKS.md
 * from them. `--quick` runs the smallest sizes, three times each, in a few minutes.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { DEFAULT_CRIU } from '../../src/criu/index.js';
import { renderReport } from './report.js';

const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const BENCH = fileURLToPath(new URL('.', import.meta.url));
const progress = (line: string): void => void process.stderr.write(`[bench] ${line}\n`);

interface Plan {
  readonly migrate: readonly string[];
  readonly link: readonly string[];
  readonly incusMove: readonly string[];
}

const FULL: Plan = {
  migrate: ['--sizes', '64,256,1024,2048', '--repetitions', '5', '--placements', 'unpinned,pinned'],
  link: ['--mib', '1024', '--repetitions', '5'],
  incusMove: ['--pools', 'default', '--sizes', '256,1024', '--round-trips', '3'],
};
const QUICK: Plan = {
  migrate: ['--sizes', '64', '--repetitions', '3', '--placements', 'unpinned,pinned'],
  link: ['--mib', '256', '--repetitions', '3'],
  incusMove: ['--pools', 'default', '--sizes', '', '--round-trips', '2'],
};

/** A plan with the sizes or repetition count given on the command line in place of its own. */
function withOverrides(plan: Plan, options: { sizes?: string; repetitions?: string }): Plan {
  const replace = (args: readonly string[], flag: string, value: string | undefined): string[] => {
    const out = [...args];
    const at = out.indexOf(flag);
    if (value !== undefined && at >= 0) out[at + 1] = value;
    return out;
  };
  const trips = options.repetitions === undefined ? undefined : String(Math.ceil(Number(options.repetitions) / 2));
  return {
    migrate: replace(replace(plan.migrate, '--sizes', options.sizes), '--repetitions', options.repetitions),
    link: replace(plan.link, '--repetitions', options.repetitions),
    incusMove: replace(replace(plan.incusMove, '--sizes', options.sizes?.split(',').filter((mib) => Number(mib) >= 256).join(',')), '--round-trips', trips),
  };
}

/** Runs one benchmark's compiled script; resolves the JSON it printed. */
function runBenchmark(name: string, args: readonly string[]): Promise<unknown> {
  progress(`${name} ${args.join(' ')}`);
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(BENCH, `${name}.js`), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    const out: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (code !== 0) return reject(new Error(`benchmark ${name} failed (${signal ?? code}); its progress is above`));
      progress(`${name} done in ${Math.round((Date.now() - started) / 1000)} s`);
      try {
        resolve(JSON.parse(Buffer.concat(out).toString('utf8')));
      } catch (error) {
        reject(new Error(`benchmark ${name} printed no JSON document`, { cause: error }));
      }
    });
  });
}

const firstLine = (command: string, args: readonly string[]): string => {
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split('\n')[0] ?? '';
  } catch {
    return 'unknown';
  }
};

/** What the numbers were measured on: they mean little without it. */
function machine() {
  const osRelease = readFileSync('/etc/os-release', 'utf8');
  return {
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    os: /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(osRelease)?.[1] ?? 'unknown',
    kernel: firstLine('uname', ['-r']),
    node: process.version,
    criu: firstLine(DEFAULT_CRIU, ['--version']).replace(/^Version:\s*/, ''),
    incus: firstLine('incus', ['--version']),
  };
}

async function main(): Promise<void> {
  const options = new Command('bench')
    .option('--quick', 'the smallest sizes, three runs each (a few minutes)', false)
    .option('--only <list>', 'some of: migrate, link, incus-move')
    .option('--sizes <list>', 'workload sizes in MiB, for migrate and incus-move (instead of the plan\'s)')
    .option('--repetitions <n>', 'runs of every case (instead of the plan\'s)')
    .parse()
    .opts<{ quick: boolean; only?: string; sizes?: string; repetitions?: string }>();
  const plan = withOverrides(options.quick ? QUICK : FULL, options);
  const only = new Set((options.only ?? 'migrate,link,incus-move').split(',').map((v) => v.trim()));
  const started = new Date();
  const results: Record<string, unknown> = { generated: started.toISOString(), quick: options.quick, machine: machine(), plan, minutes: 0 };
  const out = join(REPO, 'bench');
  mkdirSync(out, { recursive: true });
  // written again after each benchmark, so that one failing late loses nothing measured before it
  const write = (): void => {
    results['minutes'] = Math.round((Date.now() - started.getTime()) / 6000) / 10;
    writeFileSync(join(out, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
    const report = renderReport(results as unknown as Parameters<typeof renderReport>[0]);
    for (const [name, svg] of Object.entries(report.pictures)) writeFileSync(join(out, name), svg);
    writeFileSync(join(REPO, 'BENCHMARKS.md'), report.markdown);
  };
  for (const [name, key, args] of [['migrate', 'migrate', plan.migrate], ['link', 'link', plan.link], ['incus-move', 'incusMove', plan.incusMove]] as const) {
    if (!only.has(name)) continue;
    results[key] = await runBenchmark(name, args);
    write();
  }
  write();
  progress(`wrote bench/results.json, the pictures in bench/ and BENCHMARKS.md (${String(results['minutes'])} min)`);
}

main().catch((error: unknown) => {
  progress(`failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
});
