/** One TCP connection at a time, as CRIU's page server takes them, and writes that respect backpressure. */
import { createServer, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';

/** A listening socket that takes exactly one connection, as CRIU's page server does. */
export interface OneConnectionListener {
  readonly port: number;
  readonly connection: Promise<Socket>;
  /** Stops listening; a connection not yet accepted fails with an error. */
  close(): void;
}

export async function acceptOne(host: string, port: number): Promise<OneConnectionListener> {
  // a deep read buffer lets Node drain CRIU's bursts in one turn of the event loop instead of one
  // 64 KiB read per turn, which held a dump to a third of CRIU's own page-server rate
  const server = createServer({ pauseOnConnect: true, highWaterMark: 4 * 1024 * 1024 });
  let settle: { resolve(socket: Socket): void; reject(error: Error): void } | undefined;
  const connection = new Promise<Socket>((resolve, reject) => (settle = { resolve, reject }));
  connection.catch(() => {});
  server.once('connection', (socket) => {
    server.close();
    socket.setNoDelay(true);
    settle?.resolve(socket);
  });
  server.once('error', (error) => settle?.reject(error));
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
    server.listen(port, host);
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('listening socket has no TCP port');
  return {
    port: address.port,
    connection,
    close: () => {
      server.close();
      settle?.reject(new Error(`stopped listening on ${host}:${address.port} before a connection came`));
    },
  };
}

/** Writes with backpressure: resolves once the socket can take more. */
export async function writeTo(socket: Duplex, bytes: Buffer): Promise<void> {
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
