/**
 * Native `incus move` of a running container between the test hosts, there and back, measured the way
 * every haul benchmark measures: wall time of the move, and downtime as the largest gap between the
 * beats haul-workload kept in its own memory. Prints one JSON document.
 */
import { execFileSync } from 'node:child_process';
import { Command } from 'commander';
import { NativeMoveDefect, TestContainer, type TestHost } from '../../test/support/testbed.js';
import { expectedChecksum, realtimeNs } from '../../test/support/workload.js';

interface Options {
  roundTrips: number;
  pool: string;
  workloadMib: number;
}

interface Move {
  from: TestHost;
  to: TestHost;
  seconds: number;
  downtimeSeconds: number;
  sameProcess: boolean;
  checksumOk: boolean;
}

interface Spread {
  min: number;
  median: number;
  max: number;
}

/** The image's own counter: haul-workload with 1 MiB, started by init in /run/haul. */
const COUNTER = { dir: '/run/haul', mib: 1 };

function spread(values: number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { min: round(sorted[0]!), median: round(median), max: round(sorted[sorted.length - 1]!) };
}

const round = (value: number): number => Math.round(value * 1000) / 1000;
const progress = (line: string): void => void process.stderr.write(`[native-move] ${line}\n`);

/** A container running the scenario's workload, ready to move, and what an intact report looks like. */
async function launchScenario(workload: { dir: string; mib: number }, options: Options) {
  const container = await TestContainer.launch('busybox', 'src', '/tmp/counter', ['--storage', options.pool, '--config', 'user.haul.mode=off']);
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
async function measureScenario(name: string, workload: { dir: string; mib: number }, options: Options) {
  const intact = await expectedChecksum(workload.mib);
  const moves: Move[] = [];
  const defects: Array<{ kind: string; from: TestHost; to: TestHost }> = [];
  let current: Awaited<ReturnType<typeof launchScenario>> | undefined;
  try {
    while (moves.length < options.roundTrips * 2) {
      current ??= await launchScenario(workload, options);
      const { container, report: before } = current;
      const from = container.host;
      const to: TestHost = from === 'src' ? 'dst' : 'src';
      const since = realtimeNs();
      let seconds: number;
      try {
        seconds = await container.moveTo(to);
      } catch (error) {
        if (!(error instanceof NativeMoveDefect)) throw error;
        progress(`${name}: ${from} -> ${to} failed, a known defect (${error.kind}); going on with a fresh container`);
        defects.push({ kind: error.kind, from, to });
        await container.delete();
        current = undefined;
        if (defects.length > 3 * options.roundTrips) throw new Error(`${name}: too many failed moves`);
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
      progress(`${name}: ${from} -> ${to} in ${move.seconds} s, downtime ${move.downtimeSeconds} s`);
      moves.push(move);
      current.report = after;
    }
  } finally {
    await current?.container.delete();
  }
  return {
    name,
    workloadMib: workload.mib,
    moves,
    seconds: spread(moves.map((m) => m.seconds)),
    downtimeSeconds: spread(moves.map((m) => m.downtimeSeconds)),
    allIntact: moves.every((m) => m.sameProcess && m.checksumOk),
    failedMoves: defects,
  };
}

async function main(): Promise<void> {
  const options = new Command('native-move')
    .option('--round-trips <n>', 'moves src -> dst -> src per scenario', (v) => Number.parseInt(v, 10), 2)
    .option('--pool <name>', 'storage pool of the test container (default is btrfs, dir adds Incus\'s 5 s stall)', 'default')
    .option('--workload-mib <n>', 'memory of the large scenario', (v) => Number.parseInt(v, 10), 256)
    .parse()
    .opts<Options>();
  if (!(options.roundTrips >= 1) || !(options.workloadMib >= 1)) throw new Error('--round-trips and --workload-mib must be positive');

  const scenarios = [];
  scenarios.push(await measureScenario('counter', COUNTER, options));
  scenarios.push(await measureScenario(`workload-${options.workloadMib}mib`, { dir: '/run/big', mib: options.workloadMib }, options));

  const version = (cmd: string, args: string[]): string => execFileSync(cmd, args, { encoding: 'utf8' }).trim();
  process.stdout.write(
    `${JSON.stringify(
      {
        benchmark: 'native-move',
        description: 'native incus move of a running container between two incusd on one machine',
        date: new Date().toISOString(),
        host: {
          kernel: version('uname', ['-r']),
          criu: version('/usr/local/sbin/criu', ['--version']).split('\n')[0],
          incus: version('incus', ['--version']),
        },
        pool: options.pool,
        roundTrips: options.roundTrips,
        scenarios,
      },
      null,
      2,
    )}\n`,
  );
  if (!scenarios.every((s) => s.allIntact)) {
    progress('a moved workload came back restarted or with different memory');
    process.exitCode = 1;
  }
}

main().catch((error: unknown) => {
  progress(`failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
});
