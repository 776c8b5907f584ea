import { once } from 'node:events';
import { accessSync, constants, readFileSync } from 'node:fs';
import { connect, createConnection, createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { criuVersion } from '../src/criu/index.js';
import { canGuardLoopbackPorts, pickPrivilegedLoopbackPort } from '../src/host/index.js';
import { dialLink, type EndpointOptions } from '../src/link/index.js';
import { MODES, compatibilityProblem, helloOf, peerHost, shownWord, type HostSelf } from '../proxy/index.js';
import { KNOWN_CRIU_LOCATIONS, isHaulHook } from './criu-hook.js';
import type { HookWiring } from './incus-wiring.js';
import { hookSocketPath } from './hook-protocol.js';
import { cutConnections } from './incus-connections.js';
import { IncusClient } from './incus-client.js';
import { incusMoveProblem } from './incus-versions.js';
import type { Peer } from './source-role.js';

/** One finding of `haul doctor`: what was checked, what was found, and how to fix it if it failed. */
export interface Check {
  readonly check: string;
  readonly ok: boolean;
  readonly found: string;
  readonly fix?: string;
}

export interface DoctorOptions {
  readonly incusDir: string;
  /** What `haul agent install` recorded it did (its hook-wiring.json), if it ran. */
  readonly wiring?: HookWiring;
  /** Undefined: none was named and none found where packages put it. */
  readonly criuBinary: string | undefined;
  readonly peers: readonly Peer[];
  /**
   * How to reach peers: this host's identity and trust, as the agent uses them; or, where this host
   * has no link identity yet, the state dir it was looked for in (doctor makes none).
   */
  readonly endpoint: EndpointOptions | { readonly noIdentityIn: string };
  /** What this host says of itself in the handshake (its CRIU and Incus versions are read here). */
  readonly self: HostSelf;
}

const MIN_PIPE_MAX = 4 * 1024 * 1024;

/** A host's versions as its hello says them (a peer's words: shownWord quotes what is not a version). */
function versionsOf(host: { readonly haul_version: string; readonly incus_version: string; readonly criu_version: string }): string {
  return `haul ${shownWord(host.haul_version)}, Incus ${shownWord(host.incus_version)}, CRIU ${shownWord(host.criu_version)}`;
}

function sysctl(name: string): string {
  return readFileSync(`/proc/sys/${name.replace(/\./g, '/')}`, 'utf8').trim();
}

/** The first executable named `name` in the directories of `path` (a PATH), if any. */
function firstOnPath(name: string, path: string): string | undefined {
  for (const dir of path.split(':').filter(Boolean)) {
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // not here
    }
  }
  return undefined;
}

function readFileOr(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/** The network-lock a CRIU configuration file sets (criu(8): one option per line, without its dashes). */
function networkLockOf(config: string): string | undefined {
  let lock: string | undefined;
  for (const match of config.matchAll(/^\s*network-lock\s+(\S+)/gm)) lock = match[1];
  return lock;
}


/** Whether what `haul agent install` did is still in place: the hook, its files, its diversion. */
async function wiringFound(wiring: HookWiring): Promise<[boolean, string, string]> {
  const fix = 'haul agent install (it puts back what is missing)';
  const missing = [wiring.hook, ...wiring.files].filter((path) => {
    try {
      accessSync(path, constants.F_OK);
      return false;
    } catch {
      return true;
    }
  });
  if (missing.length) return [false, `${wiring.packaging}: missing ${missing.join(', ')}`, fix];
  if (!(await isHaulHook(wiring.hook))) return [false, `${wiring.hook} is not haul's hook any more (a package upgrade?)`, fix];
  if (wiring.diversion) {
    const by = await promisify(execFile)('dpkg-divert', ['--listpackage', wiring.diversion.path]).then(({ stdout }) => stdout.trim(), () => '');
    if (by !== 'haul') return [false, `${wiring.diversion.path} is not diverted by haul (${by || 'not diverted'})`, fix];
  }
  const how = { zabbly: `${wiring.diversion?.path} diverted to ${wiring.diversion?.divertedTo}, the hook in its place`, systemd: `incus.service drop-in ${wiring.files.join(', ')}`, 'by-hand': `the hook in ${dirname(wiring.hook)}` }[wiring.packaging];
  return [true, `${how}; runs ${wiring.realCriu}`, fix];
}

/** Cuts a loopback connection of this process's own, the way a failed restore's are cut. */
async function canCutConnections(): Promise<{ ok: boolean; found: string }> {
  const server = createServer((socket) => socket.on('error', () => {}));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const client = connect(port, '127.0.0.1');
  try {
    await once(client, 'connect');
    const ended = once(client, 'error').then(() => true, () => true);
    const cut = await cutConnections(process.pid, [`127.0.0.1:${port}`]);
    const seen = await Promise.race([ended, sleep(2000).then(() => false)]);
    return cut.length === 1 && seen ? { ok: true, found: 'ss -K ends a connection' } : { ok: false, found: `ss -K ended ${cut.length} of 1 test connection${seen ? '' : ', and it stayed open'}` };
  } catch (error) {
    return { ok: false, found: error instanceof Error ? error.message : String(error) };
  } finally {
    client.destroy();
    server.close();
  }
}

/**
 * Checks one host for what haul needs to route `incus move` through itself, each finding with the
 * fix for it. Reads only; changes nothing.
 */
export async function diagnose(options: DoctorOptions): Promise<Check[]> {
  const checks: Check[] = [];
  const add = (check: string, ok: boolean, found: string, fix?: string): void => void checks.push({ check, ok, found, ...(ok || !fix ? {} : { fix }) });

  let localCriu: string | undefined;
  if (options.criuBinary === undefined) {
    add('CRIU', false, `none named, and none at ${KNOWN_CRIU_LOCATIONS.join(', ')}`, 'install CRIU 4.1 or later (Debian: apt install criu, from trixie on; Zabbly\'s incus package ships /opt/incus/bin/criu), or name it with --criu or criu in the agent\'s configuration');
  } else try {
    const v = await criuVersion(options.criuBinary);
    localCriu = `${v.major}.${v.minor}.${v.patch}`;
    add('CRIU', v.major > 4 || (v.major === 4 && v.minor >= 1), `${localCriu} at ${options.criuBinary}`, 'install CRIU 4.1 or later (Debian: apt install criu, from trixie on; Zabbly\'s incus package ships /opt/incus/bin/criu) and pass its path with --criu');
  } catch (error) {
    add('CRIU', false, `${options.criuBinary}: ${error instanceof Error ? error.message : String(error)}`, 'install CRIU 4.1 or later and pass its path with --criu');
  }
  const uffd = sysctl('vm.unprivileged_userfaultfd');
  add('vm.unprivileged_userfaultfd', uffd === '1', uffd, 'sysctl -w vm.unprivileged_userfaultfd=1 (a lazy restore of an unprivileged container opens userfaultfd inside it)');
  const pipeMax = Number(sysctl('fs.pipe-max-size'));
  add('fs.pipe-max-size', pipeMax >= MIN_PIPE_MAX, String(pipeMax), `sysctl -w fs.pipe-max-size=${MIN_PIPE_MAX} (CRIU's lazy page server grows its pipes to ~3.2 MiB)`);
  try {
    accessSync('/dev/userfaultfd', constants.F_OK);
    add('userfaultfd', true, '/dev/userfaultfd');
  } catch {
    add('userfaultfd', true, 'the userfaultfd() system call (no /dev/userfaultfd)');
  }

  const loopbackGuard = await canGuardLoopbackPorts().then(() => undefined, (error: unknown) => (error instanceof Error ? error.message : String(error)));
  add('loopback guard (nftables)', loopbackGuard === undefined, loopbackGuard ?? "nftables takes haul's guard table (checked with nft --check, nothing changed)", "apt install nftables, as root: in a lazy move only root may connect to CRIU's lazy page server, which haul guards with an nftables rule while it listens");
  const picked = await pickPrivilegedLoopbackPort('listener').catch((error: unknown) => ({ port: 0, bindableByAnyone: error instanceof Error ? error.message : String(error) }));
  add('lazy page-server port', picked.bindableByAnyone === undefined, picked.bindableByAnyone ?? `free ports below net.ipv4.ip_unprivileged_port_start (${sysctl('net.ipv4.ip_unprivileged_port_start')}), which no local user but root can bind before CRIU does`, "sysctl net.ipv4.ip_unprivileged_port_start=1024 (the kernel's default): otherwise a local user who binds CRIU's lazy page-server port first makes a lazy move fail (the source runs on)");
  const guard = await canCutConnections();
  add('failed-restore guard (ss -K)', guard.ok, guard.found, "as root, with iproute2 installed and a kernel built with CONFIG_INET_DIAG_DESTROY: after a failed restore haul cuts Incus' migration connections, so that Incus cannot report the failure as a success");

  const lock = networkLockOf(readFileOr('/etc/criu/default.conf'));
  const ownPath = process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin';
  const hasIptables = [firstOnPath('iptables-restore', ownPath), firstOnPath('ip6tables-restore', ownPath)].every(Boolean);
  add("CRIU's network lock", lock === 'nftables' || lock === 'skip' || hasIptables, lock ? `network-lock ${lock} in /etc/criu/default.conf` : `CRIU's default (iptables)${hasIptables ? '' : ', but iptables-restore or ip6tables-restore is missing'}`, "echo 'network-lock nftables' >> /etc/criu/default.conf (CRIU locks a dumped container's network with iptables unless told otherwise, and its dump fails without both iptables-restore and ip6tables-restore)");

  if (options.wiring) add('hook wiring', ...(await wiringFound(options.wiring)));
  else add('hook wiring', false, 'haul agent install has not run with this --state-dir', 'haul agent install (then, where it says so, restart incusd: systemctl restart incus)');

  const incus = new IncusClient(join(options.incusDir, 'unix.socket'));
  let localIncus = '';
  try {
    const server = await incus.get<{ environment?: { server_pid?: number; server_version?: string } }>('/1.0');
    const pid = server.environment?.server_pid;
    localIncus = server.environment?.server_version ?? '';
    add('incusd', true, `Incus ${localIncus || '?'}, pid ${pid ?? '?'}, at ${incus.socketPath}`);
    if (pid) {
      const path = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').find((entry) => entry.startsWith('PATH='))?.slice(5) ?? '';
      const criu = firstOnPath('criu', path);
      const isHook = criu !== undefined && (await isHaulHook(criu));
      add('CRIU hook first on incusd\'s PATH', isHook, criu ? `${criu}${isHook ? '' : ' (not the hook)'}` : 'no criu on its PATH', 'haul agent install, then restart incusd with the hook\'s directory first on its PATH');
    }
    // a move through haul is a live move: Incus makes it only of an instance that allows it
    const notLive = (await incus.instances())
      .filter(({ expanded_config: config = {} }) => config['user.haul.mode'] !== undefined && config['user.haul.mode'] !== 'off' && config['migration.stateful'] !== 'true')
      .map((instance) => instance.name);
    add('instances haul moves can move live', notLive.length === 0, notLive.length ? `user.haul.mode set but not migration.stateful=true: ${notLive.slice(0, 10).join(', ')}` : 'every instance that sets user.haul.mode sets migration.stateful=true', `incus config set ${notLive[0] ?? 'NAME'} migration.stateful=true (for each; Incus moves the others stopped, without haul)`);
  } catch (error) {
    add('incusd', false, error instanceof Error ? error.message : String(error), `start incusd, or pass its INCUS_DIR with --incus-dir (looked at ${options.incusDir})`);
  } finally {
    await incus.close();
  }

  const hookSocket = hookSocketPath(options.incusDir);
  const agentUp = await new Promise<boolean>((resolve) => {
    const socket = createConnection(hookSocket);
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
  add('haul agent', agentUp, agentUp ? `answers on ${hookSocket}` : `nothing answers on ${hookSocket}`, 'haul agent run --listen ADDRESS:PORT --peer NAME=HOST:PORT (add --incus-dir where incusd\'s INCUS_DIR is not /var/lib/incus)');

  const endpoint = options.endpoint;
  if ('noIdentityIn' in endpoint) {
    add('link identity', false, `none in ${endpoint.noIdentityIn}: peers cannot link with this host, and were not tried`, 'haul identity (makes this host\'s key pair and prints the fingerprint its peers pin with haul trust add)');
    return checks;
  }
  // the agent on this host, not this doctor: it takes every mode where it has a CRIU
  const here = helloOf({ ...options.self, criu_version: localCriu ?? '', incus_version: localIncus, capabilities: localCriu ? [...MODES] : [] });
  for (const peer of options.peers) {
    try {
      const { session, peer: hello } = await dialLink(peer.url, endpoint, { peerName: peer.name });
      const info = peerHost(hello);
      session.close();
      add(`peer ${peer.name}`, true, `${peer.url} trusted both ways; ${versionsOf(info)}`);
      // each direction as the handshake of a move would judge it (proxy/host-hello.ts)
      for (const [check, source, destination] of [[`moves to ${peer.name}`, here, info], [`moves from ${peer.name}`, info, here]] as const) {
        const problem = compatibilityProblem(source, destination) ?? incusMoveProblem(source.incus_version, destination.incus_version);
        const modes = source.capabilities.filter((mode) => destination.capabilities.includes(mode));
        add(check, problem === undefined, problem === undefined ? `${modes.length ? modes.join(' and ') : 'no mode both take'}: ${versionsOf(source)} -> ${versionsOf(destination)}` : `refused: ${problem}`, 'upgrade the host the reason names (CRIU, Incus, or haul on both), then run haul agent doctor again');
      }
    } catch (error) {
      add(`peer ${peer.name}`, false, `${peer.url}: ${error instanceof Error ? error.message : String(error)}`, `check that haul-agent runs there (systemctl status haul-agent), and that each side trusts the other: haul agent token there, then haul agent join here with that token (or haul trust add ${peer.name} <fingerprint> here, and the reverse there)`);
    }
  }
  return checks;
}
