import { execFile, execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { REPO } from './paths.js';

const run = promisify(execFile);
const SCRIPT = join(REPO, 'scripts/realhost');

/** Where a host of scripts/realhost has its root, seen from this machine. */
export const rootOf = (host: string): string => `/var/lib/haul-testbed/realhost/${host}`;

/** A short command inside `host` (all its namespaces); throws with its stderr when it fails. */
export const on = (host: string, ...command: string[]): string =>
  execFileSync(SCRIPT, ['run', host, ...command], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024 });

/**
 * For what may take seconds (apt, restarting incusd, a move): the worker stays free to answer vitest
 * meanwhile. Its stdin is `input`, or closed at once (`incus exec` waits for the end of its stdin).
 */
export async function onAsync(host: string, command: readonly string[], input = ''): Promise<string> {
  const child = run(SCRIPT, ['run', host, ...command], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024, timeout: 300_000, killSignal: 'SIGKILL' });
  child.child.stdin!.end(input);
  return (await child).stdout;
}

/** What a host's root is: Debian 12 with Debian's Incus 6.0, or sid with sid's Incus 7.0 and CRIU 4.2. */
export type Release = 'bookworm' | 'sid';

/** A fresh host: whatever an interrupted run left of one by that name goes first. `address`: on the hosts' LAN. */
export async function freshHost(host: string, address?: string, release: Release = 'bookworm'): Promise<void> {
  await run(SCRIPT, ['down', host]);
  await run(SCRIPT, ['up', '--release', release, host, ...(address ? [address] : [])], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 });
}

export async function downHost(host: string): Promise<void> {
  await run(SCRIPT, ['down', host]);
}

/** Builds haul's .deb into `dir` (npm run package), resolving its path. */
export async function buildPackage(dir: string): Promise<string> {
  return (await run(join(REPO, 'scripts/package'), [dir], { cwd: REPO, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 })).stdout.trim();
}

export const journalOf = (host: string, unit: string): string => on(host, 'journalctl', '-u', unit, '-o', 'cat', '--no-pager');

export interface DoctorLine {
  readonly check: string;
  readonly ok: boolean;
  readonly found: string;
}

/** `haul doctor -f json` there; it exits 1 when a check fails, and its lines still say which. */
export function doctorOn(host: string): DoctorLine[] {
  try {
    return JSON.parse(on(host, 'haul', 'doctor', '-f', 'json')) as DoctorLine[];
  } catch (error) {
    return JSON.parse((error as { stdout: string }).stdout) as DoctorLine[];
  }
}

/** Polls `probe` until it returns something (a throw counts as nothing yet), for at most `ms`. */
export async function until<T>(what: string, probe: () => T | undefined, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const seen = (() => {
      try {
        return probe();
      } catch {
        return undefined;
      }
    })();
    if (seen !== undefined) return seen;
    if (Date.now() > deadline) throw new Error(`not within ${ms / 1000} s: ${what}`);
    await sleep(250);
  }
}

/** The haul agent's port on the hosts' LAN. */
export const AGENT_PORT = 7444;

/**
 * Incus set up as the test bed's (README, "The test bed"): a dir pool, no network device, live
 * moves allowed, and liblxc's console and AppArmor settings this kernel cannot restore.
 */
const preseed = (address: string): string => `config:
  core.https_address: ${address}:8443
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  config:
    migration.stateful: "true"
    raw.lxc: |-
      lxc.console.path = none
      lxc.apparmor.profile =
  devices:
    root:
      path: /
      pool: default
      type: disk
`;

/** The newest busybox counter image scripts/setup-host cached. */
function busyboxImage(): string {
  const name = readdirSync('/var/cache/haul/images').find((entry) => /^busybox-.*\.tar\.gz$/.test(entry));
  if (!name) throw new Error('no busybox image in /var/cache/haul/images: run scripts/setup-host first');
  return join('/var/cache/haul/images', name);
}

/**
 * A fresh host of `release` at `address` with Incus and haul's package installed as an operator
 * would (README, "Install"), the agent listening on the LAN, and the busybox counter image at hand.
 * CRIU runs behind the wrapper these hosts need on this machine (scripts/lib/realhost-criu): the test
 * bed's build on bookworm hosts, sid's own on sid hosts.
 */
export async function incusHostWithHaul(host: string, address: string, release: Release, deb: string): Promise<void> {
  await freshHost(host, address, release);
  const root = rootOf(host);
  copyFileSync(deb, `${root}/var/tmp/haul.deb`);
  copyFileSync(busyboxImage(), `${root}/var/tmp/busybox.tar.gz`);
  mkdirSync(`${root}/usr/local/lib/haul-testbed`, { recursive: true });
  if (release === 'bookworm') copyFileSync('/usr/local/sbin/criu', `${root}/usr/local/lib/haul-testbed/criu`);
  else symlinkSync('/usr/sbin/criu', `${root}/usr/local/lib/haul-testbed/criu`);
  copyFileSync(join(REPO, 'scripts/lib/realhost-criu'), `${root}/usr/local/sbin/criu`);
  on(host, 'chmod', '755', '/usr/local/sbin/criu');
  // as README's install section has it on a host without iptables; and idmapped mounts off, as
  // on the test bed (a restored rootfs would not be the container's otherwise)
  on(host, 'sh', '-c', "mkdir -p /etc/criu && echo 'network-lock nftables' >> /etc/criu/default.conf && echo INCUS_IDMAPPED_MOUNTS_DISABLE=1 >> /etc/default/incus");
  await onAsync(host, ['env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', 'install', '-y', '-q', '--no-install-recommends', '/var/tmp/haul.deb']);
  await onAsync(host, ['systemctl', 'start', 'incus.service']);
  await onAsync(host, ['haul', 'agent', 'install', '--criu', '/usr/local/sbin/criu', '--restart']);
  await onAsync(host, ['incus', 'admin', 'init', '--preseed'], preseed(address));
  on(host, 'sh', '-c', `printf 'listen = "${address}:${AGENT_PORT}"\\ncriu = "/usr/local/sbin/criu"\\n' >> /etc/haul/agent.conf`);
  await onAsync(host, ['systemctl', 'restart', 'haul-agent.service']);
  await onAsync(host, ['incus', 'image', 'import', '/var/tmp/busybox.tar.gz', '--alias', 'busybox']);
}

/**
 * What an operator does once per pair of hosts, for each pair in `pairs` (a source and its
 * destination): haul's pairing (`haul agent join`, once for both directions), each host's peers in
 * its agent.conf, and Incus' own trust, so that the source can `incus move` to the destination. `address`: each host's.
 */
export async function pairHosts(pairs: readonly (readonly [string, string])[], address: Readonly<Record<string, string>>): Promise<void> {
  const peers = new Map<string, Set<string>>();
  for (const [source, target] of pairs) {
    if (peers.get(source)?.has(target)) continue; // paired already, the other way round
    const token = (await onAsync(source, ['haul', 'agent', 'token'])).trim();
    await onAsync(target, ['haul', 'agent', 'join'], `${token}\n`);
    for (const [host, peer] of [[source, target], [target, source]] as const) peers.set(host, (peers.get(host) ?? new Set()).add(peer));
  }
  for (const [host, names] of peers) {
    const lines = [...names].map((peer) => `${peer} = "${address[peer]}:${AGENT_PORT}"`).join('\\n');
    on(host, 'sh', '-c', `printf '[peers]\\n${lines}\\n' >> /etc/haul/agent.conf`);
    await onAsync(host, ['systemctl', 'restart', 'haul-agent.service']);
  }
  for (const [source, target] of pairs) {
    const incusToken = (await onAsync(target, ['incus', 'config', 'trust', 'add', source])).trim().split('\n').at(-1)!;
    await onAsync(source, ['incus', 'remote', 'add', target, incusToken]);
  }
}

export interface StatusRecord {
  readonly instance: string;
  readonly role: string;
  readonly mode: string;
  readonly result: string;
  readonly peer: string;
}

/** What `haul status` on `host` recorded of moves of `instance`. */
export const movesRecorded = (host: string, instance: string): StatusRecord[] =>
  (JSON.parse(on(host, 'haul', 'status', '-f', 'json')) as { recent: StatusRecord[] }).recent.filter((record) => record.instance === instance);
