import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { isRunning, type ProcessIdentity } from './process-identity.js';
import { canonicalEndpoint, connectionsSeenBy, socketInodesOf } from './tcp-table.js';

/** A loopback connection's other end is not the process haul expected there. */
export class UnexpectedPeerError extends Error {
  override readonly name = 'UnexpectedPeerError';
  readonly code = 'HAUL_UNEXPECTED_PEER';
  constructor(
    readonly endpoint: string,
    readonly expectedPid: number,
    detail: string,
  ) {
    super(`the connection with ${endpoint} is not held by process ${expectedPid}: ${detail}`);
  }
}

/** How long a connection may wait in a listener's accept queue before it counts as not accepted. */
const ACCEPT_WAIT_MS = 5000;
const POLL_MS = 10;

/**
 * Resolves once the other end of `socket` (a TCP connection within this host's network namespace)
 * is a socket the `expected` process (its pid and start time) holds; rejects with UnexpectedPeerError when another process holds it,
 * or when `pid` has not accepted it within a few seconds. Any local user can connect to a loopback
 * port, and can listen on one haul chose before the program haul meant to start there does, so
 * neither end of such a connection is believed before this check.
 *
 * The kernel's TCP table names each end's socket inode (0 while a connection waits in an accept
 * queue, since it has no file yet); /proc/PID/fd says which process holds it.
 */
export async function expectPeerProcess(socket: Socket, expected: ProcessIdentity): Promise<void> {
  const { pid } = expected;
  const here = canonicalEndpoint(`${bracketed(socket.localAddress)}:${socket.localPort}`);
  const there = canonicalEndpoint(`${bracketed(socket.remoteAddress)}:${socket.remotePort}`);
  if (!here || !there) throw new UnexpectedPeerError(String(socket.remoteAddress), pid, 'the connection has no TCP endpoints');
  const deadline = Date.now() + ACCEPT_WAIT_MS;
  for (;;) {
    const peerEnd = (await connectionsSeenBy('self')).find((connection) => connection.local === there && connection.remote === here);
    if (!peerEnd) throw new UnexpectedPeerError(there, pid, 'the kernel lists no such connection (it ended, or its peer is in another network namespace)');
    if (peerEnd.inode !== 0) {
      const held = await socketInodesOf(pid).catch(() => new Set<number>());
      // the same process as expected, checked after its files were: not one that took its pid since
      if (held.has(peerEnd.inode) && isRunning(expected)) return;
      if (held.has(peerEnd.inode)) throw new UnexpectedPeerError(there, pid, 'that pid is another process now');
      throw new UnexpectedPeerError(there, pid, `another process holds its socket (inode ${peerEnd.inode})`);
    }
    if (Date.now() > deadline) throw new UnexpectedPeerError(there, pid, `not accepted within ${ACCEPT_WAIT_MS / 1000} s`);
    await sleep(POLL_MS);
  }
}

function bracketed(address: string | undefined): string {
  return address?.includes(':') ? `[${address}]` : String(address);
}
