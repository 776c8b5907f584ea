import { readFile, readdir, readlink } from 'node:fs/promises';
import { endianness } from 'node:os';

/** One established TCP connection as the kernel lists it (/proc/PID/net/tcp, tcp6). */
export interface TcpConnection {
  /** host:port, the host as a URL writes it (IPv6 in brackets, shortest form; IPv4-mapped as IPv4). */
  readonly local: string;
  readonly remote: string;
  /** 0 while the connection waits in a listener's accept queue: it has no file yet. */
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

/** `host:port` in the one spelling the kernel's tables, node's sockets and Incus' addresses are brought to. */
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

/** The inodes of the sockets among process `pid`'s open files. */
export async function socketInodesOf(pid: number): Promise<Set<number>> {
  const inodes = new Set<number>();
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const socket = /^socket:\[(\d+)\]$/.exec(target);
    if (socket) inodes.add(Number(socket[1]));
  }
  return inodes;
}

/** Every established TCP connection in the network namespace of process `pid`. */
export async function connectionsSeenBy(pid: number | 'self'): Promise<TcpConnection[]> {
  const tables = await Promise.all(['tcp', 'tcp6'].map((name) => readFile(`/proc/${pid}/net/${name}`, 'utf8').catch(() => '')));
  return tables.flatMap(establishedConnections);
}
