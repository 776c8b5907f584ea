/** One connection at a time (TCP, or a unix socket for --ps-socket), as CRIU's page server takes them, and writes that respect backpressure. */
import { chmod, lstat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';

/** A listening socket that takes exactly one connection, as CRIU's page server does. */
export interface OneConnectionListener {
  readonly port: number;
  readonly connection: Promise<Socket>;
  /** Stops listening; a connection not yet accepted fails with an error. */
  close(): void;
}

/** The same on a unix socket: for `criu dump --ps-socket`, whose process connects to `path`. */
export interface OneLocalConnectionListener {
  readonly path: string;
  readonly connection: Promise<Socket>;
  close(): void;
}

/**
 * Decides whether a connection is the one the listener waits for; rejects for any other, which is
 * then dropped unread while the listener goes on waiting. Anyone on this host may connect to a
 * loopback port, so a listener for CRIU names its peer.
 */
export type ConnectionCheck = (socket: Socket) => Promise<void>;

export async function acceptOne(host: string, port: number, check?: ConnectionCheck, onRefused?: (error: unknown) => void): Promise<OneConnectionListener> {
  const listening = await listenOnce((server) => server.listen(port, host), check, onRefused);
  const address = listening.server.address();
  if (address === null || typeof address === 'string') throw new Error('listening socket has no TCP port');
  return { port: address.port, connection: listening.connection, close: () => listening.close(`${host}:${address.port}`) };
}

/**
 * `path` must not exist (a stale socket is the caller's to remove) and must fit a sockaddr_un
 * (see `fitsUnixSocketPath`).
 */
export async function acceptOneLocal(path: string): Promise<OneLocalConnectionListener> {
  // who may connect is decided by the directory, before listening: only its owner may enter it
  const directory = await lstat(dirname(path));
  const euid = process.geteuid?.() ?? 0;
  if (!directory.isDirectory() || directory.uid !== euid || (directory.mode & 0o077) !== 0) {
    throw new Error(`${dirname(path)} must be a directory of uid ${euid} that no one else may enter (mode 0700) before haul listens in it`);
  }
  const listening = await listenOnce((server) => server.listen(path));
  await chmod(path, 0o600);
  return { path, connection: listening.connection, close: () => listening.close(path) };
}

/** sun_path holds 108 bytes with the terminating NUL. */
export function fitsUnixSocketPath(path: string): boolean {
  return Buffer.byteLength(path) < 108;
}

async function listenOnce(listen: (server: Server) => void, check?: ConnectionCheck, onRefused?: (error: unknown) => void): Promise<{ server: Server; connection: Promise<Socket>; close(where: string): void }> {
  // a deep read buffer lets Node drain CRIU's bursts in one turn of the event loop instead of one
  // 64 KiB read per turn, which held a dump to a third of CRIU's own page-server rate
  const server = createServer({ pauseOnConnect: true, highWaterMark: 4 * 1024 * 1024 });
  let settle: { resolve(socket: Socket): void; reject(error: Error): void } | undefined;
  const connection = new Promise<Socket>((resolve, reject) => (settle = { resolve, reject }));
  connection.catch(() => {});
  let accepted = false;
  const take = (socket: Socket): void => {
    if (accepted) return void socket.destroy();
    accepted = true;
    server.close();
    // CRIU may reset it before its reader starts: whoever reads or writes it sees the end
    // (iteration fails, writeTo rejects on 'close'); an unheard 'error' would end the process
    socket.on('error', () => {});
    socket.setNoDelay(true); // a no-op on unix sockets
    settle?.resolve(socket);
  };
  server.on('connection', (socket) => {
    socket.on('error', () => {}); // a refused or late one must not crash haul; the taker reads errors
    if (!check) return take(socket);
    check(socket).then(
      () => take(socket),
      (error: unknown) => {
        socket.destroy();
        onRefused?.(error);
      },
    );
  });
  server.once('error', (error) => settle?.reject(error));
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
    listen(server);
  });
  return {
    server,
    connection,
    close: (where) => {
      server.close();
      settle?.reject(new Error(`stopped listening on ${where} before a connection came`));
    },
  };
}

/** Writes with backpressure: resolves once the socket can take more. */
export async function writeTo(socket: Duplex, bytes: Buffer): Promise<void> {
  if (socket.destroyed) throw new Error('connection closed before this write'); // no 'close' would come
  if (socket.write(bytes)) return;
  await new Promise<void>((resolve, reject) => {
    const onDrain = (): void => {
      socket.off('close', onClose);
      resolve();
    };
    const onClose = (): void => {
      socket.off('drain', onDrain);
      reject(new Error('connection closed while writing'));
    };
    socket.once('drain', onDrain);
    socket.once('close', onClose);
  });
}
