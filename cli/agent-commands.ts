import { execFile } from 'node:child_process';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Command, InvalidArgumentError, Option } from 'commander';
import { PAGE_SIZE } from '../src/criu/index.js';
import { parseListen, thisHost } from './host-and-address.js';
import { hostHandshake } from '../proxy/index.js';
import { PairingOffers, decodePairingToken, encodePairingToken, joinPeer, loadIdentity, loadOrCreateIdentity, peerName } from '../src/link/index.js';
import { DEFAULT_STATE_DIR, openTrustStore, stateDirOf } from './state-dir.js';
import { Agent, InsecureAgentError, KNOWN_CRIU_LOCATIONS, diagnose, incusVersionAt, uninstallHook, unwireHook, wireHook, type HookWiring, type IncusPackaging, IN_FLIGHT_FILE, readInFlight, type MigrationProgress, MigrationRecords, type MigrationRecord } from '../plugin/index.js';
import { logStrayErrors } from './stray-errors.js';
import { EXIT } from './exit-codes.js';
import { formatOf, withFormat, type OutputFormat } from './output-format.js';
import { AgentConfigError, DEFAULT_AGENT_CONFIG } from './agent-config.js';
import { DEFAULT_RESTORE_TIMEOUT_S, agentSettings, parseAgentMode, parsePeer, parsePositiveSeconds, positiveNumber, type AgentFlags } from './agent-settings.js';
import { logLineFormat } from './log-lines.js';

const DEFAULT_HOOK_DIR = '/usr/local/lib/haul/hook';
/** In the state dir: what `haul agent install` did, for `haul agent uninstall`. */
const HOOK_WIRING_FILE = 'hook-wiring.json';
const PACKAGING_WORDS: Record<IncusPackaging, string> = {
  zabbly: "Zabbly's package (/opt/incus), its CRIU replaced by the hook",
  systemd: 'incus.service under systemd, its PATH set by a drop-in with the hook first',
  'by-hand': 'started by hand (no incus.service, no /opt/incus)',
};
const RESTART_KEEPS_CONTAINERS = 'running containers keep running: incus.service stops incusd with SIGTERM alone, which leaves them running';

/** The pairing tokens this host issued and its agent has not yet seen used. */
const pairingOffers = (stateDir: string): PairingOffers => new PairingOffers(join(stateDir, 'pairing-offers'));

/** wireHook and unwireHook have had systemd re-read the unit already. */
async function restartIncusd(): Promise<void> {
  await promisify(execFile)('systemctl', ['restart', 'incus.service']);
}

/** What `haul agent install` recorded it did in `stateDir`, if it ran there (a file only root writes). */
const readHookWiring = (stateDir: string): Promise<HookWiring | undefined> =>
  readFile(join(stateDir, HOOK_WIRING_FILE), 'utf8').then((text) => JSON.parse(text) as HookWiring, () => undefined);
/** How long a stopping agent waits for its moves in progress; haul-agent.service's TimeoutStopSec is longer. */
const DRAIN_MS = 14 * 60_000;
/** How long an agent's start waits for incusd to say its version. */
const INCUS_VERSION_WAIT_MS = 3_000;

/** `haul agent …` and `haul status`: the Incus plugin's commands. */
export function addAgentCommands(program: Command, out: (line: string) => void): void {
  const agent = program.command('agent').description('the Incus plugin: an agent beside incusd that routes native `incus move` through haul');

  agent
    .command('run')
    .description(`run the agent (in the foreground) beside one incusd; settings from ${DEFAULT_AGENT_CONFIG} (or --config), flags overriding them`)
    .option('--config <file>', 'the configuration file (TOML)', DEFAULT_AGENT_CONFIG)
    .option('--incus-dir <dir>', "incusd's INCUS_DIR (config: incus-dir)", process.env['INCUS_DIR'] ?? '/var/lib/incus')
    .option('--listen <address:port>', 'where peers reach this agent (config: listen)', parseListen)
    .option('--peer <name=host:port>', "another host's agent, repeat for each (config: [peers]); flags replace the file's peers", parsePeer, [])
    .option('--name <name>', "this host's name, as its peers call it (config: name; default: the hostname)")
    .addOption(new Option('--default-mode <mode>', 'for instances without user.haul.mode (config: default-mode; default: pre-copy)').choices(['pre-copy', 'lazy', 'off', 'precopy']).argParser(parseAgentMode))
    .addOption(new Option('--insecure', 'refused: an agent talks to its peers over TLS only').hideHelp())
    .option('--criu <path>', `the real CRIU (config: criu; default: the first of ${KNOWN_CRIU_LOCATIONS.join(', ')})`)
    .option('--restore-timeout <seconds>', `kill a restore still running after this long, so the source resumes (config: restore-timeout; default: ${DEFAULT_RESTORE_TIMEOUT_S}; per instance: user.haul.restore-timeout)`, parsePositiveSeconds)
    .action(async (flags: AgentFlags & { insecure?: boolean }, command: Command) => {
      if (flags.insecure) throw new InsecureAgentError();
      const settings = await agentSettings(command, flags);
      if (!settings.criu) throw new AgentConfigError(`no CRIU found (looked at ${KNOWN_CRIU_LOCATIONS.join(', ')}): install one, or name it with --criu or criu in ${flags.config}`);
      if (!settings.listen) throw new AgentConfigError(`no address to listen on for peers: set listen in ${flags.config}, or pass --listen ADDRESS:PORT`);
      const stateDir = stateDirOf(command);
      const line = logLineFormat();
      logStrayErrors((text) => out(line(text, 'error')));
      const security = { identity: await loadOrCreateIdentity(stateDir), trust: await openTrustStore(stateDir) };
      // `haul agent token` issues, this agent answers the other host's `haul agent join`
      const pairing = { offers: pairingOffers(stateDir), trust: security.trust, name: settings.name, onPaired: (peer: string, fingerprint: string) => out(line(`paired with ${peer}: trusts its certificate ${fingerprint} (add it to [peers] in ${flags.config} to move to it)`)) };
      const criu = settings.criu;
      const running = await Agent.start({
        ...security,
        pairing,
        // what this host runs, for its peers' haul doctor
        application: hostHandshake(await thisHost('agent', criu, { incusVersion: await incusVersionAt(settings.incusDir, INCUS_VERSION_WAIT_MS) })),
        incusDir: settings.incusDir,
        stateDir: join(stateDir, 'agent'),
        listen: settings.listen,
        peers: settings.peers.map((peer) => ({ name: peer.name, url: `wss://${peer.url}` })),
        name: settings.name,
        defaultMode: settings.defaultMode,
        criuBinary: criu,
        restoreTimeoutMs: settings.restoreTimeoutS * 1000,
        retention: settings.records,
        log: (text, level) => out(line(text, level)),
      });
      out(line(`haul agent ${settings.name} for ${settings.incusDir}: peers on ${settings.listen.address}:${running.port} (${settings.peers.map((peer) => `${peer.name}=${peer.url}`).join(', ') || 'none configured'}), CRIU ${criu}, default mode ${settings.defaultMode}, hook socket ${running.hookSocket}`));
      const signalled = (): Promise<void> =>
        new Promise<void>((resolve) => {
          process.once('SIGINT', resolve);
          process.once('SIGTERM', resolve);
        });
      await signalled();
      // a stop (systemctl stop, a package upgrade) lets the moves in progress finish first; a second
      // signal stops at once, and the moves then end with the process (CRIU resumes their sources)
      if (running.movesInProgress > 0) {
        out(line(`stopping: ${running.movesInProgress} moves in progress; taking no new one and waiting up to ${DRAIN_MS / 60_000} min for them (signal again to stop now)`, 'warning'));
        const left = await Promise.race([running.drain(DRAIN_MS), signalled().then(() => running.movesInProgress)]);
        if (left > 0) out(line(`stopping with ${left} moves in progress: their sources resume`, 'warning'));
      }
      await Promise.race([running.close(), new Promise((resolve) => setTimeout(resolve, 3000).unref())]);
      process.exit(0);
    });

  agent
    .command('token')
    .description('a one-time token with which another host pairs with this one (haul agent join there); this host\'s agent must be running to answer it')
    .option('--config <file>', "the agent's configuration file", DEFAULT_AGENT_CONFIG)
    .option('--address <host:port>', 'where the other host reaches this one (default: listen in the configuration, unless it is a wildcard)')
    .option('--name <name>', "this host's name, as the other host will call it (default: name in the configuration, else the hostname)")
    .option('--expires <minutes>', 'how long the token is good for', positiveNumber('minutes'), 10)
    .action(async (flags: { config: string; address?: string; name?: string; expires: number }, command: Command) => {
      const stateDir = stateDirOf(command);
      const settings = await agentSettings(command, { config: flags.config, incusDir: '/var/lib/incus', peer: [], ...(flags.name ? { name: flags.name } : {}) });
      const listen = settings.listen;
      const address = flags.address ?? (listen && !['0.0.0.0', '::', ''].includes(listen.address) ? `${listen.address.includes(':') ? `[${listen.address}]` : listen.address}:${listen.port}` : undefined);
      if (!address) throw new AgentConfigError(`this host's agent listens on ${listen ? `${listen.address}:${listen.port}` : 'no address yet'}: say where the other host reaches it, --address HOST:PORT`);
      const identity = await loadOrCreateIdentity(stateDir);
      const secret = await pairingOffers(stateDir).issue(flags.expires * 60_000);
      out(encodePairingToken({ name: peerName(settings.name), address, fingerprint: identity.fingerprint, secret }));
      process.stderr.write(`on the other host, within ${flags.expires} min: haul agent join, and paste this token (it is good once; keep it from others)\n`);
    });

  agent
    .command('join')
    .description("pair with the host whose `haul agent token` printed the token read from stdin: each then trusts the other's certificate")
    .option('--config <file>', "the agent's configuration file", DEFAULT_AGENT_CONFIG)
    .option('--name <name>', "this host's name, as the other host will call it (default: name in the configuration, else the hostname)")
    .action(async (flags: { config: string; name?: string }, command: Command) => {
      const stateDir = stateDirOf(command);
      // from stdin, never an argument: any local user can read a process' arguments (ps), and
      // whoever has the token first can pair a certificate of their own in this host's place
      if (process.stdin.isTTY) process.stderr.write('the token from haul agent token on the other host: ');
      const text = (await new Promise<string>((resolve, reject) => {
        const lines = createInterface({ input: process.stdin });
        lines.once('line', (line) => {
          resolve(line);
          lines.close();
        });
        lines.once('close', () => resolve(''));
        process.stdin.once('error', reject);
      })).trim();
      if (!text) throw new AgentConfigError('no pairing token on stdin (haul agent join < file, or paste it when asked)');
      const settings = await agentSettings(command, { config: flags.config, incusDir: '/var/lib/incus', peer: [], ...(flags.name ? { name: flags.name } : {}) });
      const token = decodePairingToken(text);
      const peer = await joinPeer(token, { identity: await loadOrCreateIdentity(stateDir), trust: await openTrustStore(stateDir), name: settings.name });
      out(`paired with ${peer} (${token.address}): each host trusts the other, ${peer} calls this one ${settings.name}`);
      out(`to move containers there, add under [peers] in ${flags.config}: ${peer} = "${token.address}", then systemctl restart haul-agent (and the same for this host there)`);
    });

  agent
    .command('install')
    .description("put the CRIU hook where this host's incusd finds it first, as its packaging allows (Zabbly: a dpkg-divert of its CRIU; a systemd unit: a drop-in; else the hook's dir, to put first on incusd's PATH by hand)")
    .option('--hook-dir <dir>', 'where the hook goes (not for Zabbly, whose CRIU it replaces)', DEFAULT_HOOK_DIR)
    .option('--criu <path>', 'the real CRIU the hook runs (default: the one incusd would have run)')
    .option('--restart', 'restart incusd (systemctl restart incus) where it must be restarted to find the hook', false)
    .action(async (options: { hookDir: string; criu?: string; restart: boolean }, command: Command) => {
      const wiringFile = join(stateDirOf(command), HOOK_WIRING_FILE);
      // an earlier install is undone first: one wiring at a time, and its record always the one in place
      const earlier = await readHookWiring(stateDirOf(command));
      if (earlier) await unwireHook(earlier);
      const wiring = await wireHook({ hookDir: options.hookDir, ...(options.criu ? { realCriu: options.criu } : {}) });
      await mkdir(stateDirOf(command), { recursive: true, mode: 0o700 });
      await writeFile(wiringFile, `${JSON.stringify(wiring, null, 2)}\n`, { mode: 0o600 });
      out(`installed the hook ${wiring.hook} (runs ${wiring.realCriu}); incusd here: ${PACKAGING_WORDS[wiring.packaging]}${wiring.files.length ? `; wrote ${wiring.files.join(', ')}` : ''}${wiring.diversion ? `; ${wiring.diversion.path} diverted to ${wiring.diversion.divertedTo}` : ''}`);
      if (wiring.packaging === 'by-hand') return out(`start incusd with ${options.hookDir} first on its PATH`);
      if (!wiring.needsRestart) return out('incusd finds the hook from its next CRIU call on: no restart needed');
      if (!options.restart) return out(`restart incusd to take it: systemctl restart incus (${RESTART_KEEPS_CONTAINERS}; systemd has re-read the unit), or run this again with --restart`);
      await restartIncusd();
      out(`restarted incusd (${RESTART_KEEPS_CONTAINERS})`);
    });

  agent
    .command('uninstall')
    .description('undo what haul agent install did (moves are native again)')
    .option('--hook-dir <dir>', 'where the hook is, for a hook installed before install kept a record', DEFAULT_HOOK_DIR)
    .option('--restart', 'restart incusd where it must be restarted to stop finding the hook', false)
    .action(async (options: { hookDir: string; restart: boolean }, command: Command) => {
      const wiringFile = join(stateDirOf(command), HOOK_WIRING_FILE);
      const kept = await readHookWiring(stateDirOf(command));
      if (!kept) return out((await uninstallHook(options.hookDir)) ? `removed ${options.hookDir}/criu` : `no hook in ${options.hookDir}`);
      await unwireHook(kept);
      await rm(wiringFile, { force: true });
      out(`removed the hook ${kept.hook}${kept.files.length ? ` and ${kept.files.join(', ')}` : ''}${kept.diversion ? `; ${kept.diversion.path} is the package's CRIU again` : ''}`);
      if (!kept.needsRestart || kept.packaging === 'by-hand') return;
      if (!options.restart) return out(`restart incusd to stop using it: systemctl restart incus (${RESTART_KEEPS_CONTAINERS})`);
      await restartIncusd();
      out('restarted incusd');
    });

  withFormat(
    program
      .command('doctor')
      .description(`check this host for what routing incus move through haul needs, with a fix for each failure; changes nothing. Reads the agent's settings (${DEFAULT_AGENT_CONFIG}), flags overriding them`)
      .option('--config <file>', "the agent's configuration file", DEFAULT_AGENT_CONFIG)
      .option('--incus-dir <dir>', "incusd's INCUS_DIR", process.env['INCUS_DIR'] ?? '/var/lib/incus')
      .option('--peer <name=host:port>', 'a peer agent to reach (repeat for each; default: the configured peers)', parsePeer, [])
      .option('--insecure', 'reach peers over plain WebSocket (loopback only)', false)
      .option('--criu <path>', `the real CRIU (default: the configured one, else the first of ${KNOWN_CRIU_LOCATIONS.join(', ')})`),
    'one JSON array of {check, ok, found, fix}',
  ).action(async (flags: AgentFlags & { insecure: boolean; format: OutputFormat; json?: boolean }, command: Command) => {
    const stateDir = stateDirOf(command);
    const settings = await agentSettings(command, flags);
    const host = await thisHost('doctor', settings.criu, { migrates: false });
    // doctor changes nothing: it uses this host's identity if it has one, and makes none
    const identity = flags.insecure ? undefined : await loadIdentity(stateDir);
    const security = flags.insecure ? { insecure: true } : identity ? { identity, trust: await openTrustStore(stateDir) } : undefined;
    const scheme = flags.insecure ? 'ws' : 'wss';
    const wiring = await readHookWiring(stateDir);
    const checks = await diagnose({
      ...(wiring ? { wiring } : {}),
      self: host, incusDir: settings.incusDir, criuBinary: settings.criu, endpoint: security ? { ...security, application: hostHandshake(host), resumeWindowMs: 1000 } : { noIdentityIn: stateDir },
      peers: settings.peers.map((peer) => ({ name: peer.name, url: `${scheme}://${peer.url}` })),
    });
    if (formatOf(flags) === 'json') out(JSON.stringify(checks));
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

function parseCount(value: string): number {
  const count = Number(value);
  if (!Number.isInteger(count) || count < 0) throw new InvalidArgumentError(`expected a whole number, got ${JSON.stringify(value)}`);
  return count;
}

