/** One connection at a time (TCP, or a unix socket for --ps-socket), as CRIU's page server takes them, and writes that respect backpressure. */
import { chmod } from 'node:fs/promises';
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

export async function acceptOne(host: string, port: number): Promise<OneConnectionListener> {
  const listening = await listenOnce((server) => server.listen(port, host));
  const address = listening.server.address();
  if (address === null || typeof address === 'string') throw new Error('listening socket has no TCP port');
  return { port: address.port, connection: listening.connection, close: () => listening.close(`${host}:${address.port}`) };
}

/**
 * `path` must not exist (a stale socket is the caller's to remove) and must fit a sockaddr_un
 * (see `fitsUnixSocketPath`).
 */
export async function acceptOneLocal(path: string): Promise<OneLocalConnectionListener> {
  const listening = await listenOnce((server) => server.listen(path));
  await chmod(path, 0o600);
  return { path, connection: listening.connection, close: () => listening.close(path) };
}

/**
 * A loopback TCP port free a moment ago, for a page server CRIU itself listens on (a lazy dump's):
 * CRIU takes a port number, not a socket.
 */
export async function freeLoopbackPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('listening socket has no TCP port');
  return address.port;
}

/** sun_path holds 108 bytes with the terminating NUL. */
export function fitsUnixSocketPath(path: string): boolean {
  return Buffer.byteLength(path) < 108;
}

async function listenOnce(listen: (server: Server) => void): Promise<{ server: Server; connection: Promise<Socket>; close(where: string): void }> {
  // a deep read buffer lets Node drain CRIU's bursts in one turn of the event loop instead of one
  // 64 KiB read per turn, which held a dump to a third of CRIU's own page-server rate
  const server = createServer({ pauseOnConnect: true, highWaterMark: 4 * 1024 * 1024 });
  let settle: { resolve(socket: Socket): void; reject(error: Error): void } | undefined;
  const connection = new Promise<Socket>((resolve, reject) => (settle = { resolve, reject }));
  connection.catch(() => {});
  server.once('connection', (socket) => {
    server.close();
    // CRIU may reset it before its reader starts: whoever reads or writes it sees the end
    // (iteration fails, writeTo rejects on 'close'); an unheard 'error' would end the process
    socket.on('error', () => {});
    socket.setNoDelay(true); // a no-op on unix sockets
    settle?.resolve(socket);
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
