/**
 * Native `incus move` of a running container between the test hosts, there and back, measured the way
 * every haul benchmark measures: wall time of the move, and downtime as the largest gap between the
 * beats haul-workload kept in its own memory. Prints one JSON document.
 */
import { execFileSync } from 'node:child_process';
import { Command } from 'commander';
import { TestContainer, type TestHost } from '../../test/support/testbed.js';
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
  return { min: sorted[0]!, median, max: sorted[sorted.length - 1]! };
}

const round = (value: number): number => Math.round(value * 1000) / 1000;
const progress = (line: string): void => void process.stderr.write(`[native-move] ${line}\n`);

async function measureScenario(name: string, workload: { dir: string; mib: number }, options: Options) {
  const container = await TestContainer.launch('busybox', 'src', '/tmp/counter', ['--storage', options.pool]);
  try {
    if (workload.dir !== COUNTER.dir) {
      await container.exec(['haul-workload', 'start', '--dir', workload.dir, '--mib', String(workload.mib)]);
    }
    const intact = await expectedChecksum(workload.mib);
    let before = await container.workloadReport(workload.dir);
    const moves: Move[] = [];
    for (let trip = 0; trip < options.roundTrips; trip++) {
      for (const to of ['dst', 'src'] satisfies TestHost[]) {
        const from = container.host;
        const since = realtimeNs();
        const seconds = await container.moveTo(to);
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
        before = after;
      }
    }
    return {
      name,
      workloadMib: workload.mib,
      moves,
      seconds: spread(moves.map((m) => m.seconds)),
      downtimeSeconds: spread(moves.map((m) => m.downtimeSeconds)),
      allIntact: moves.every((m) => m.sameProcess && m.checksumOk),
    };
  } finally {
    await container.delete();
  }
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
