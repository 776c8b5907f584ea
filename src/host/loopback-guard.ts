import { execFile } from 'node:child_process';

/** nftables could not set up or change the guard. */
export class LoopbackGuardError extends Error {
  override readonly name = 'LoopbackGuardError';
  readonly code = 'HAUL_LOOPBACK_GUARD';
}

/** A loopback TCP port only root's sockets may connect to, until released. */
export interface LoopbackGuard {
  readonly port: number;
  /** Lets everyone connect again; never throws (the element also expires by itself). */
  release(): Promise<void>;
}

export interface LoopbackGuardOptions {
  /** The nft program; found on PATH by default. */
  readonly nft?: string;
  /** How long the guard holds if haul never releases it (it died): the set element's timeout. */
  readonly expireAfterSeconds?: number;
}

const TABLE = 'inet haul';
const PORTS = 'guarded_loopback_ports';
const DEFAULT_EXPIRY_S = 6 * 3600;

/**
 * Keeps every local user but root from connecting to `port` on loopback, for a listener haul
 * cannot check connections on itself: the page server `criu dump --lazy-pages` opens and serves to
 * the first client it accepts (criu/util.c run_tcp_server accepts one connection; a CLOSE from
 * anyone there makes CRIU count the migration done and end the source).
 *
 * One nftables table holds a set of guarded ports and an output rule that resets a connection to
 * one of them from a socket whose owner is not uid 0; each guard is one element of that set, with a
 * timeout, so a guard haul could not release (it was killed) goes away by itself. The rule sees
 * the connecting socket's owner (meta skuid), which a user namespace cannot fake: it is the uid on
 * this host. Containers have network namespaces of their own and never reach this loopback.
 * Set up before the port is handed to the program that will listen on it.
 */
export async function guardLoopbackPort(port: number, options: LoopbackGuardOptions = {}): Promise<LoopbackGuard> {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new LoopbackGuardError(`no such TCP port: ${port}`);
  const nft = options.nft ?? 'nft';
  await runNft(nft, ['-f', '-'], guardScript(port, options.expireAfterSeconds ?? DEFAULT_EXPIRY_S));
  return {
    port,
    release: () => runNft(nft, ['delete', 'element', ...TABLE.split(' '), PORTS, `{ ${port} }`], '').catch(() => {}),
  };
}

/** Whether this host's nftables would take a guard, asked without changing anything (nft --check). */
export async function canGuardLoopbackPorts(options: Pick<LoopbackGuardOptions, 'nft'> = {}): Promise<void> {
  await runNft(options.nft ?? 'nft', ['--check', '-f', '-'], guardScript(1, DEFAULT_EXPIRY_S));
}

/**
 * One transaction: the table, set and chains are made if missing, the chains' rules replaced by
 * the same ones (so set-ups running at once agree), and the port's element added.
 */
function guardScript(port: number, expirySeconds: number): string {
  return [
    `add table ${TABLE}`,
    `add set ${TABLE} ${PORTS} { type inet_service; flags timeout; }`,
    `add chain ${TABLE} loopback_output { type filter hook output priority filter; policy accept; }`,
    `flush chain ${TABLE} loopback_output`,
    `add rule ${TABLE} loopback_output ip daddr 127.0.0.0/8 tcp dport @${PORTS} meta skuid != 0 reject with tcp reset`,
    `add rule ${TABLE} loopback_output ip6 daddr ::1 tcp dport @${PORTS} meta skuid != 0 reject with tcp reset`,
    // and what comes to loopback from outside (a host with route_localnet set) never reaches them
    `add chain ${TABLE} loopback_input { type filter hook input priority filter; policy accept; }`,
    `flush chain ${TABLE} loopback_input`,
    `add rule ${TABLE} loopback_input iifname != "lo" ip daddr 127.0.0.0/8 tcp dport @${PORTS} drop`,
    `add rule ${TABLE} loopback_input iifname != "lo" ip6 daddr ::1 tcp dport @${PORTS} drop`,
    `add element ${TABLE} ${PORTS} { ${port} timeout ${expirySeconds}s }`,
  ].join('\n');
}

function runNft(nft: string, args: readonly string[], input: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = execFile(nft, args, { timeout: 10_000 }, (error, _stdout, stderr) => {
      if (!error) return resolve();
      const missing = (error as NodeJS.ErrnoException).code === 'ENOENT';
      reject(new LoopbackGuardError(missing ? `${nft} not found: haul needs nftables (apt install nftables) to keep local users off CRIU's page server` : `${nft} ${args.join(' ')} failed: ${stderr.trim() || error.message}`, { cause: error }));
    });
    child.stdin?.on('error', () => {}); // an nft that exits early must not crash haul
    child.stdin?.end(input);
  });
}
