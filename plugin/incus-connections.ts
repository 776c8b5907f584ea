import { execFile } from 'node:child_process';
import { readFile, readdir, readlink } from 'node:fs/promises';
import { isIP } from 'node:net';
import { endianness } from 'node:os';
import { promisify } from 'node:util';

/** One established TCP connection as the kernel lists it (/proc/PID/net/tcp, tcp6). */
export interface TcpConnection {
  /** host:port, the host as a URL writes it (IPv6 in brackets, shortest form; IPv4-mapped as IPv4). */
  readonly local: string;
  readonly remote: string;
  readonly inode: number;
}

const ESTABLISHED = '01';

/**
 * The established connections in the text of /proc/net/tcp or /proc/net/tcp6: addresses there are
 * hex, in the kernel's byte order (net/ipv4/tcp_ipv4.c get_tcp4_sock, net/ipv6/tcp_ipv6.c get_tcp6_sock).
 */
export function establishedConnections(table: string): TcpConnection[] {
  const found: TcpConnection[] = [];
  for (const line of table.split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 10 || fields[3] !== ESTABLISHED) continue;
    const local = endpointOf(fields[1]!);
    const remote = endpointOf(fields[2]!);
    if (local && remote) found.push({ local, remote, inode: Number(fields[9]) });
  }
  return found;
}

/** `host:port` in the one spelling both the kernel's table and Incus' addresses are brought to. */
export function canonicalEndpoint(endpoint: string): string | undefined {
  try {
    const url = new URL(`tcp://${endpoint}`); // no default port to drop
    const mapped = /^\[::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})\]$/.exec(url.hostname);
    const host = mapped ? ipv4FromWords(parseInt(mapped[1]!, 16), parseInt(mapped[2]!, 16)) : url.hostname;
    return url.port ? `${host}:${url.port}` : undefined;
  } catch {
    return undefined;
  }
}

function ipv4FromWords(high: number, low: number): string {
  return [high >> 8, high & 0xff, low >> 8, low & 0xff].join('.');
}

function endpointOf(hex: string): string | undefined {
  const [address, port] = hex.split(':');
  if (!address || !port) return undefined;
  // the address is in 32-bit words, each in the host's byte order
  const inNetworkOrder = (word: string): string => (endianness() === 'LE' ? word.match(/../g)!.reverse().join('') : word);
  const words = address.match(/.{8}/g)?.map(inNetworkOrder) ?? [];
  let host: string;
  if (words.length === 1) host = words[0]!.match(/../g)!.map((byte) => parseInt(byte, 16)).join('.');
  else if (words.length === 4) host = `[${words.join('').match(/.{4}/g)!.join(':')}]`;
  else return undefined;
  return canonicalEndpoint(`${host}:${parseInt(port, 16)}`);
}

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
  const inodes = new Set<number>();
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const socket = /^socket:\[(\d+)\]$/.exec(target);
    if (socket) inodes.add(Number(socket[1]));
  }
  const tables = await Promise.all(['tcp', 'tcp6'].map((name) => readFile(`/proc/${pid}/net/${name}`, 'utf8').catch(() => '')));
  return tables.flatMap(establishedConnections).filter((connection) => inodes.has(connection.inode) && peers.has(connection.remote));
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
