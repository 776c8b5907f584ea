import { execFile } from 'node:child_process';
import { lookup } from 'node:dns/promises';
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

/** The endpoints `host:port` stands for: itself for an IP address, every address a name resolves to. */
export async function resolveEndpoint(endpoint: string): Promise<string[]> {
  const canonical = canonicalEndpoint(endpoint);
  if (!canonical) return [];
  const url = new URL(`tcp://${canonical}`);
  if (isIP(url.hostname.replace(/^\[(.*)\]$/, '$1'))) return [canonical];
  const addresses = await lookup(url.hostname, { all: true }).catch(() => []);
  return addresses.map(({ address, family }) => canonicalEndpoint(family === 6 ? `[${address}]:${url.port}` : `${address}:${url.port}`)).filter((found): found is string => found !== undefined);
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
 * Ends every established TCP connection process `pid` holds to one of `peers` (host:port, names
 * resolved), as `ss -K` does (the kernel aborts the socket and resets the peer; it needs
 * CONFIG_INET_DIAG_DESTROY, without which `ss -K` ends nothing and says nothing). Returns the
 * connections it ended; fails if any of them is still there after.
 */
export async function cutConnections(pid: number, peers: readonly string[]): Promise<TcpConnection[]> {
  const wanted = new Set((await Promise.all(peers.map(resolveEndpoint))).flat());
  if (wanted.size === 0) return [];
  const doomed = await connectionsTo(pid, wanted);
  for (const connection of doomed) {
    await promisify(execFile)('ss', ['-K', '-t', '-n', `dst ${connection.remote} and src ${connection.local}`]);
  }
  const left = new Set((await connectionsTo(pid, wanted)).map((connection) => connection.inode));
  const survivors = doomed.filter((connection) => left.has(connection.inode));
  if (survivors.length > 0) throw new Error(`ss -K left ${survivors.length} of ${doomed.length} connections open (a kernel without CONFIG_INET_DIAG_DESTROY?)`);
  return doomed;
}
