import { stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { DEFAULT_CRIU, PAGE_SIZE } from '../src/criu/index.js';
import { parseListen, thisHost } from './host-and-address.js';
import { hostHandshake } from '../proxy/index.js';
import { loadIdentity, loadOrCreateIdentity } from '../src/link/index.js';
import { DEFAULT_STATE_DIR, openTrustStore, stateDirOf } from './trust-commands.js';
import { Agent, InsecureAgentError, diagnose, installHook, uninstallHook, IN_FLIGHT_FILE, readInFlight, type MigrationProgress, MigrationRecords, type MigrationRecord, type HaulMode, type Peer, parseHaulMode } from '../plugin/index.js';
import { logStrayErrors } from './stray-errors.js';
import { EXIT } from './exit-codes.js';
import { formatOf, withFormat, type OutputFormat } from './output-format.js';

const DEFAULT_HOOK_DIR = '/usr/local/lib/haul/hook';

function parsePeer(value: string, previous: Peer[]): Peer[] {
  const match = /^([^=]+)=(.+:\d+)$/.exec(value);
  if (!match) throw new InvalidArgumentError('expected NAME=HOST:PORT');
  return [...previous, { name: match[1]!, url: match[2]! }];
}


/** `haul agent …` and `haul status`: the Incus plugin's commands. */
export function addAgentCommands(program: Command, out: (line: string) => void): void {
  const agent = program.command('agent').description('the Incus plugin: an agent beside incusd that routes native `incus move` through haul');

  agent
    .command('run')
    .description('run the agent (in the foreground) beside one incusd')
    .option('--incus-dir <dir>', "incusd's INCUS_DIR", process.env['INCUS_DIR'] ?? '/var/lib/incus')
    .requiredOption('--listen <address:port>', 'where peers reach this agent', parseListen)
    .option('--peer <name=host:port>', 'another host\'s agent (repeat for each)', parsePeer, [])
    .option('--name <name>', 'this host\'s name, as its peers call it', hostname())
    .addOption(new Option('--default-mode <mode>', 'for instances without user.haul.mode').choices(['pre-copy', 'lazy', 'off', 'precopy']).default('pre-copy').argParser(agentMode))
    .addOption(new Option('--insecure', 'refused: an agent talks to its peers over TLS only').hideHelp())
    .option('--criu <path>', 'the real CRIU', DEFAULT_CRIU)
    .option('--restore-timeout <seconds>', 'kill a restore still running after this long, so the source resumes (per instance: user.haul.restore-timeout)', parsePositiveSeconds, 300)
    .action(async (options: { incusDir: string; listen: { address: string; port: number }; peer: Peer[]; name: string; defaultMode: HaulMode; insecure: boolean; criu: string; restoreTimeout: number }, command: Command) => {
      if (options.insecure) throw new InsecureAgentError();
      const stateDir = stateDirOf(command);
      logStrayErrors((line) => out(`${new Date().toISOString()} ${line}`));
      const security = { identity: await loadOrCreateIdentity(stateDir), trust: await openTrustStore(stateDir) };
      const running = await Agent.start({
        ...security,
        application: hostHandshake(await thisHost('agent', options.criu)),
        incusDir: options.incusDir,
        stateDir: join(stateDir, 'agent'),
        listen: options.listen,
        peers: options.peer.map((peer) => ({ name: peer.name, url: `wss://${peer.url}` })),
        name: options.name,
        defaultMode: options.defaultMode,
        criuBinary: options.criu,
        restoreTimeoutMs: options.restoreTimeout * 1000,
        log: (line) => out(`${new Date().toISOString()} ${line}`),
      });
      out(`${new Date().toISOString()} haul agent for ${options.incusDir}: peers on ${options.listen.address}:${running.port}, hook socket ${running.hookSocket}`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      // migrations in flight end with the process (CRIU then resumes their sources): do not hang on them
      await Promise.race([running.close(), new Promise((resolve) => setTimeout(resolve, 3000).unref())]);
      process.exit(0);
    });

  agent
    .command('install')
    .description('install the CRIU hook; put its directory first on incusd\'s PATH (and restart incusd)')
    .option('--hook-dir <dir>', 'where the hook goes', DEFAULT_HOOK_DIR)
    .option('--criu <path>', 'the real CRIU the hook runs', DEFAULT_CRIU)
    .action(async (options: { hookDir: string; criu: string }) => {
      const path = await installHook(options.hookDir, options.criu);
      out(`installed ${path} (runs ${options.criu}); incusd must have ${options.hookDir} first on its PATH`);
    });

  agent
    .command('uninstall')
    .description('remove the CRIU hook (moves are native again)')
    .option('--hook-dir <dir>', 'where the hook is', DEFAULT_HOOK_DIR)
    .action(async (options: { hookDir: string }) => {
      out((await uninstallHook(options.hookDir)) ? `removed ${options.hookDir}/criu` : `no hook in ${options.hookDir}`);
    });

  withFormat(
    program
      .command('doctor')
      .description('check this host for what routing incus move through haul needs, with a fix for each failure; changes nothing')
      .option('--incus-dir <dir>', "incusd's INCUS_DIR", process.env['INCUS_DIR'] ?? '/var/lib/incus')
      .option('--peer <name=host:port>', 'a peer agent to reach (repeat for each)', parsePeer, [])
      .option('--insecure', 'reach peers over plain WebSocket (loopback only)', false)
      .option('--criu <path>', 'the real CRIU', DEFAULT_CRIU),
    'one JSON array of {check, ok, found, fix}',
  ).action(async (options: { incusDir: string; peer: Peer[]; insecure: boolean; criu: string; format: OutputFormat; json?: boolean }, command: Command) => {
    const stateDir = stateDirOf(command);
    const host = await thisHost('doctor', options.criu, { migrates: false });
    // doctor changes nothing: it uses this host's identity if it has one, and makes none
    const identity = options.insecure ? undefined : await loadIdentity(stateDir);
    const security = options.insecure ? { insecure: true } : identity ? { identity, trust: await openTrustStore(stateDir) } : undefined;
    const scheme = options.insecure ? 'ws' : 'wss';
    const checks = await diagnose({
      incusDir: options.incusDir, criuBinary: options.criu, endpoint: security ? { ...security, application: hostHandshake(host), resumeWindowMs: 1000 } : { noIdentityIn: stateDir },
      peers: options.peer.map((peer) => ({ name: peer.name, url: `${scheme}://${peer.url}` })),
    });
    if (formatOf(options) === 'json') out(JSON.stringify(checks));
    else for (const c of checks) out(`${c.ok ? 'ok  ' : 'FAIL'} ${c.check}: ${c.found}${c.fix ? `\n     fix: ${c.fix}` : ''}`);
    if (checks.some((c) => !c.ok)) process.exitCode = EXIT.failed;
  });

  withFormat(
    program
      .command('status')
      .description("the migrations this host's agent has in progress, and the recent ones, newest last")
      .option('--recent <n>', 'how many ended migrations to list', parseCount, 20)
      .option('-w, --watch', 'show it again every second, until interrupted', false),
    'one JSON object {inProgress, recent} (with --watch, one per line)',
  ).action(async (options: { format: OutputFormat; json?: boolean; recent: number; watch: boolean }, command: Command) => {
    const stateDir = join(stateDirOf(command), 'agent');
    // a wrong --state-dir must not read as a quiet host
    if (!(await stat(stateDir).catch(() => undefined))?.isDirectory()) throw new Error(`no haul agent has kept its state in ${stateDir} (is --state-dir right? the agent's default is ${DEFAULT_STATE_DIR})`);
    const records = new MigrationRecords(join(stateDir, 'migrations.jsonl'));
    const show = async (): Promise<void> => {
      const recent = (await records.all()).slice(-options.recent);
      const moving = await readInFlight(join(stateDir, IN_FLIGHT_FILE));
      if (formatOf(options) === 'json') return out(JSON.stringify({ inProgress: moving, recent }));
      if (options.watch && process.stdout.isTTY) process.stdout.write('\x1b[H\x1b[2J');
      out(moving.length ? 'in progress:' : 'no migration in progress');
      for (const m of moving) out(`  ${bar(m)}`);
      out(recent.length ? 'recent:' : 'no migrations recorded');
      for (const r of recent) out(`  ${describe(r)}`);
    };
    await show();
    if (!options.watch) return;
    const stop = new AbortController();
    process.once('SIGINT', () => stop.abort());
    process.once('SIGTERM', () => stop.abort());
    for (;;) {
      try {
        await sleep(1000, undefined, { signal: stop.signal });
      } catch {
        return; // interrupted: the watch is over
      }
      await show();
    }
  });
}

/** One migration in progress: a bar when the total is known, else a count; MiB, rate and phase. */
function bar(m: MigrationProgress): string {
  const mib = (m.pages * PAGE_SIZE) / 2 ** 20;
  const seconds = Math.max((Date.now() - Date.parse(m.startedAt)) / 1000, 0.001);
  const width = 24;
  const done = m.totalPages ? Math.min(1, m.pages / m.totalPages) : undefined;
  const shown = done === undefined ? '' : `[${'#'.repeat(Math.round(done * width)).padEnd(width, '.')}] ${Math.round(done * 100)}% `;
  return `${m.instance} ${m.role === 'source' ? 'to' : 'from'} ${m.peer} ${m.mode}: ${shown}${m.pages} pages, ${mib.toFixed(1)} MiB, ${(mib / seconds).toFixed(1)} MiB/s; ${m.phase}`;
}

function describe(r: MigrationRecord): string {
  const mib = (r.bytes / 2 ** 20).toFixed(1);
  const downtime = r.downtimeMs === undefined ? '' : `, down ${r.downtimeMs} ms`;
  return `${r.startedAt} ${r.instance} ${r.role === 'source' ? 'to' : 'from'} ${r.peer || '-'} ${r.mode}: ${r.result}, ${r.pages} pages, ${mib} MiB, ${r.totalMs} ms${downtime}${r.error ? ` (${r.error})` : ''}`;
}

/** A mode, or off; 'precopy', the older spelling of pre-copy, still means it. */
function agentMode(value: string): HaulMode {
  const mode = parseHaulMode(value);
  if (!mode) throw new InvalidArgumentError(`expected pre-copy, lazy or off, got ${JSON.stringify(value)}`);
  return mode;
}

function parseCount(value: string): number {
  const count = Number(value);
  if (!Number.isInteger(count) || count < 0) throw new InvalidArgumentError(`expected a whole number, got ${JSON.stringify(value)}`);
  return count;
}

function parsePositiveSeconds(value: string): number {
  const seconds = Number(value);
  if (!Number.isFinite(seconds) || seconds <= 0) throw new InvalidArgumentError(`expected a number of seconds above 0, got ${JSON.stringify(value)}`);
  return seconds;
}
