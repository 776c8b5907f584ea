import { execFile } from 'node:child_process';
import { isIP } from 'node:net';
import { promisify } from 'node:util';
import { canonicalEndpoint, connectionsSeenBy, socketInodesOf, type TcpConnection } from '../src/host/index.js';

/** How many of the source's incusd addresses the destination takes (Incus lists one per address it listens on). */
export const MAX_MANAGER_ADDRESSES = 8;

/** `endpoint` (host:port) in canonical form when its host is an IP literal that names one host; else undefined. */
function ipEndpoint(endpoint: string): string | undefined {
  const canonical = canonicalEndpoint(endpoint);
  if (!canonical) return undefined;
  const host = new URL(`tcp://${canonical}`).hostname.replace(/^\[(.*)\]$/, '$1');
  if (!isIP(host) || host === '0.0.0.0' || host === '::') return undefined;
  return canonical;
}

/** A socket's remote address (IPv4, IPv6, or IPv4-mapped IPv6) spelled as canonicalEndpoint spells hosts. */
function hostOf(address: string): string | undefined {
  const family = isIP(address);
  if (!family) return undefined;
  return canonicalEndpoint(family === 6 ? `[${address}]:1` : `${address}:1`)?.replace(/:1$/, '');
}

/**
 * Which of the addresses the source says its incusd listens on (MigrationStart's
 * manager_addresses) the destination may cut its incusd's connections to: IP literals only (no
 * name is resolved: a lookup could hang, and would let the source's DNS pick what is cut), of the
 * host the link itself came from (`linkPeer`, the remote address of the link's connection), at
 * most MAX_MANAGER_ADDRESSES. A source can then never steer the cut to a third host.
 */
export function cuttableEndpoints(claimed: readonly string[], linkPeer: string | undefined): { endpoints: string[]; ignored: string[] } {
  const peerHost = linkPeer === undefined ? undefined : hostOf(linkPeer);
  const endpoints: string[] = [];
  const ignored: string[] = [];
  for (const endpoint of claimed) {
    const ip = ipEndpoint(endpoint);
    const matches = ip !== undefined && peerHost !== undefined && ip.slice(0, ip.lastIndexOf(':')) === peerHost;
    if (matches && endpoints.length < MAX_MANAGER_ADDRESSES && !endpoints.includes(ip)) endpoints.push(ip);
    else ignored.push(endpoint);
  }
  return { endpoints, ignored };
}

/** The established TCP connections process `pid` holds to one of `peers` (canonical host:port). */
async function connectionsTo(pid: number, peers: ReadonlySet<string>): Promise<TcpConnection[]> {
  const inodes = await socketInodesOf(pid);
  return (await connectionsSeenBy(pid)).filter((connection) => inodes.has(connection.inode) && peers.has(connection.remote));
}

/**
 * The `ss` filters (as cutConnections runs them) of the established TCP connections process `pid`
 * holds now to one of `peers` (IP literals, as for cutConnections): for someone else to cut them
 * later (the restore log's gatekeeper, when the agent is gone).
 */
export async function connectionFilters(pid: number, peers: readonly string[]): Promise<string[]> {
  const wanted = new Set(peers.map(ipEndpoint).filter((endpoint): endpoint is string => endpoint !== undefined));
  if (wanted.size === 0) return [];
  return (await connectionsTo(pid, wanted)).map(ssFilter);
}

function ssFilter(connection: TcpConnection): string {
  return `dst ${connection.remote} and src ${connection.local}`;
}

/**
 * Ends every established TCP connection process `pid` holds to one of `peers` (host:port, IP
 * literals; a name is never resolved and cuts nothing), as `ss -K` does (the kernel aborts the socket and resets the peer; it needs
 * CONFIG_INET_DIAG_DESTROY, without which `ss -K` ends nothing and says nothing). Returns the
 * connections it ended; fails if any of them is still there after.
 */
export async function cutConnections(pid: number, peers: readonly string[]): Promise<TcpConnection[]> {
  const wanted = new Set(peers.map(ipEndpoint).filter((endpoint): endpoint is string => endpoint !== undefined));
  if (wanted.size === 0) return [];
  const doomed = await connectionsTo(pid, wanted);
  for (const connection of doomed) {
    await promisify(execFile)('ss', ['-K', '-t', '-n', ssFilter(connection)]);
  }
  const left = new Set((await connectionsTo(pid, wanted)).map((connection) => connection.inode));
  const survivors = doomed.filter((connection) => left.has(connection.inode));
  if (survivors.length > 0) throw new Error(`ss -K left ${survivors.length} of ${doomed.length} connections open (a kernel without CONFIG_INET_DIAG_DESTROY?)`);
  return doomed;
}
