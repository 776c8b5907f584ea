import { execFile } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { promisify } from 'node:util';
import { canonicalEndpoint, connectionsSeenBy, socketInodesOf, type TcpConnection } from '../src/host/index.js';

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
  const inodes = await socketInodesOf(pid);
  return (await connectionsSeenBy(pid)).filter((connection) => inodes.has(connection.inode) && peers.has(connection.remote));
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
