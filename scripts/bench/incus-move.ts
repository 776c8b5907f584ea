/**
 * `incus move` of a running container between the test hosts, there and back: natively
 * (user.haul.mode=off) and through haul (pre-copy, lazy), in one run, measured the way every haul
 * benchmark measures: wall time of the move, and downtime as the largest gap between the beats
 * haul-workload kept in its own memory. Prints one JSON document with haul's ratios to native.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { NativeMoveDefect, TestContainer, type TestHost } from '../../test/support/testbed.js';
import { expectedChecksum, realtimeNs } from '../../test/support/workload.js';
import { ratio, spread } from './spread.js';

type Mode = 'off' | 'pre-copy' | 'lazy';

interface Options {
  roundTrips: number;
  pools: string;
  sizes: string;
  modes: string;
}

interface Move {
  from: TestHost;
  to: TestHost;
  seconds: number;
  downtimeSeconds: number;
  sameProcess: boolean;
  checksumOk: boolean;
}

const HAUL = fileURLToPath(new URL('../../cli/haul.js', import.meta.url));
const HOSTS: readonly TestHost[] = ['src', 'dst'];
/**
 * Each test-bed host's hook (scripts/lib/host.sh hook_dir) and its agent's state (scripts/testbed
 * agent_state), where the record of its hook lives: installed with another host's state, a hook
 * would replace that host's.
 */
const hookDir = (host: TestHost): string => `/usr/local/lib/haul/hook-${host}`;
const stateDir = (host: TestHost): string => `/var/lib/haul-testbed/${host}/haul`;
const onHost = (host: TestHost, args: string[]): void => void execFileSync(process.execPath, [HAUL, '--state-dir', stateDir(host), ...args], { stdio: ['ignore', 'ignore', 'inherit'] });

/** Native is native: haul's hooks out of incusd's PATH while `measure` runs, then back, each with the CRIU it ran. */
async function withoutHooks<T>(measure: () => Promise<T>): Promise<T> {
  const criu = new Map(HOSTS.map((host) => [host, /^real_criu='([^']*)'$/m.exec(readFileSync(`${hookDir(host)}/criu`, 'utf8'))?.[1] ?? '/usr/local/sbin/criu']));
  try {
    for (const host of HOSTS) onHost(host, ['agent', 'uninstall', '--hook-dir', hookDir(host)]);
    return await measure();
  } finally {
    for (const host of HOSTS) onHost(host, ['agent', 'install', '--hook-dir', hookDir(host), '--criu', criu.get(host)!]);
  }
}

/** The image's own counter: haul-workload with 1 MiB, started by init in /run/haul. */
const COUNTER = { dir: '/run/haul', mib: 1 };

const round = (value: number): number => Math.round(value * 1000) / 1000;
const progress = (line: string): void => void process.stderr.write(`[incus-move] ${line}\n`);

/** A container running the scenario's workload, ready to move, and what an intact report looks like. */
async function launchScenario(workload: { dir: string; mib: number }, pool: string, mode: Mode) {
  const container = await TestContainer.launch('busybox', 'src', '/tmp/counter', ['--storage', pool, '--config', `user.haul.mode=${mode}`]);
  if (workload.dir !== COUNTER.dir) {
    await container.exec(['haul-workload', 'start', '--dir', workload.dir, '--mib', String(workload.mib)]);
  }
  return { container, report: await container.workloadReport(workload.dir) };
}

/**
 * Moves one container there and back ROUND-TRIPS times. A move that hits a known defect of the native
 * path (NativeMoveDefect) is counted, and the scenario goes on with a fresh container: the failed name
 * cannot be moved to that host again until its incusd restarts.
 */
async function measureScenario(name: string, workload: { dir: string; mib: number }, pool: string, mode: Mode, roundTrips: number) {
  const intact = await expectedChecksum(workload.mib);
  const moves: Move[] = [];
  const defects: Array<{ kind: string; from: TestHost; to: TestHost }> = [];
  let current: Awaited<ReturnType<typeof launchScenario>> | undefined;
  try {
    while (moves.length < roundTrips * 2) {
      current ??= await launchScenario(workload, pool, mode);
      const { container, report: before } = current;
      const from = container.host;
      const to: TestHost = from === 'src' ? 'dst' : 'src';
      const since = realtimeNs();
      let seconds: number;
      try {
        seconds = await container.moveTo(to);
      } catch (error) {
        if (!(error instanceof NativeMoveDefect)) throw error;
        progress(`${pool} ${name} ${mode}: ${from} -> ${to} failed, a known defect (${error.kind}); going on with a fresh container`);
        defects.push({ kind: error.kind, from, to });
        await container.delete();
        current = undefined;
        if (defects.length > 3 * roundTrips) throw new Error(`${name}: too many failed moves`);
        continue;
      }
      const after = await container.workloadReport(workload.dir, since);
      const move: Move = {
        from,
        to,
        seconds: round(seconds),
        downtimeSeconds: round(Number(after.maxGapNs) / 1e9),
        sameProcess: after.pid === before.pid && after.tick > before.tick,
        checksumOk: after.checksum === intact,
      };
      progress(`${pool} ${name} ${mode}: ${from} -> ${to} in ${move.seconds} s, downtime ${move.downtimeSeconds} s`);
      moves.push(move);
      current.report = after;
    }
  } finally {
    await current?.container.delete();
  }
  return {
    name,
    pool,
    mode,
    workloadMib: workload.mib,
    moves,
    seconds: spread(moves.map((m) => m.seconds)),
    downtimeSeconds: spread(moves.map((m) => m.downtimeSeconds)),
    allIntact: moves.every((m) => m.sameProcess && m.checksumOk),
    failedMoves: defects,
  };
}

async function main(): Promise<void> {
  const options = new Command('incus-move')
    .option('--round-trips <n>', 'moves src -> dst -> src per scenario and mode', (v) => Number.parseInt(v, 10), 1)
    .option('--pools <list>', 'storage pools (default is btrfs; dir adds Incus\'s 5 s stall)', 'default,dir')
    .option('--sizes <list>', 'MiB of the workload containers, beside the counter container', '256,1024')
    .option('--modes <list>', 'off (native), pre-copy, lazy', 'off,pre-copy,lazy')
    .parse()
    .opts<Options>();
  const list = (value: string): string[] => value.split(',').map((v) => v.trim()).filter(Boolean);
  const sizes = list(options.sizes).map(Number);
  const modes = list(options.modes) as Mode[];
  if (!(options.roundTrips >= 1) || sizes.some((n) => !(n >= 1)) || modes.some((m) => !['off', 'pre-copy', 'lazy'].includes(m))) {
    throw new Error('--round-trips and --sizes must be positive, --modes a list of off, pre-copy, lazy');
  }
  const scenarios: Array<Awaited<ReturnType<typeof measureScenario>>> = [];
  for (const pool of list(options.pools)) {
    for (const [name, workload] of [['counter', COUNTER], ...sizes.map((mib) => [`workload-${mib}mib`, { dir: '/run/big', mib }] as const)] as const) {
      for (const mode of modes) {
        const measure = () => measureScenario(name, workload, pool, mode, options.roundTrips);
        scenarios.push(await (mode === 'off' ? withoutHooks(measure) : measure()));
      }
    }
  }
  const median = (pool: string, name: string, mode: Mode): number | undefined =>
    scenarios.find((s) => s.pool === pool && s.name === name && s.mode === mode)?.downtimeSeconds.median;
  const comparisons = scenarios
    .filter((s) => s.mode === 'off')
    .map((s) => ({
      pool: s.pool,
      name: s.name,
      nativeDowntimeSeconds: s.downtimeSeconds.median,
      preCopyDowntimeRatio: ratio(median(s.pool, s.name, 'pre-copy'), s.downtimeSeconds.median),
      lazyDowntimeRatio: ratio(median(s.pool, s.name, 'lazy'), s.downtimeSeconds.median),
      preCopyAddsSeconds: median(s.pool, s.name, 'pre-copy') === undefined ? null : round(median(s.pool, s.name, 'pre-copy')! - s.downtimeSeconds.median),
      lazyAddsSeconds: median(s.pool, s.name, 'lazy') === undefined ? null : round(median(s.pool, s.name, 'lazy')! - s.downtimeSeconds.median),
    }));
  const largest = `workload-${Math.max(...sizes)}mib`;
  const version = (cmd: string, args: string[]): string => execFileSync(cmd, args, { encoding: 'utf8' }).trim();
  process.stdout.write(
    `${JSON.stringify(
      {
        benchmark: 'incus-move',
        description: 'incus move of a running container between two incusd on one machine: native (haul\'s hook removed from incusd\'s PATH) and through haul (pre-copy, lazy), medians of each scenario',
        date: new Date().toISOString(),
        host: {
          kernel: version('uname', ['-r']),
          criu: version('/usr/local/sbin/criu', ['--version']).split('\n')[0],
          incus: version('incus', ['--version']),
        },
        roundTrips: options.roundTrips,
        targets: { btrfsLazyVsNativeAt1GiB: 0.05, btrfsPreCopyVsNativeAt1GiB: 0.3, neverSlowerThanNative: 1 },
        comparisons,
        lazyGrowth: Object.fromEntries(list(options.pools).map((pool) => [pool, ratio(median(pool, largest, 'lazy'), median(pool, 'counter', 'lazy'))])),
        scenarios,
      },
      null,
      2,
    )}\n`,
  );
}

main().catch((error: unknown) => {
  progress(`failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
});
