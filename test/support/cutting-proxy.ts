import { createServer, connect, type Server, type Socket } from 'node:net';

/**
 * A loopback TCP proxy that forwards to `target` and, when told, cuts every open connection at once
 * (both directions, no goodbye), as a network outage would, or freezes them (open, but silent).
 * New connections go through again.
 */
export async function cuttingProxy(target: number): Promise<{ port: number; cut(): number; freeze(): number; close(): Promise<void>; connections: number }> {
  const open = new Set<Socket>();
  const all = new Set<Socket>();
  let connections = 0;
  const server: Server = createServer((client) => {
    connections++;
    const upstream = connect(target, '127.0.0.1');
    for (const socket of [client, upstream]) {
      open.add(socket);
      all.add(socket);
    }
    client.pipe(upstream);
    upstream.pipe(client);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      for (const socket of [client, upstream]) {
        open.delete(socket);
        all.delete(socket);
      }
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no port');
  return {
    port: address.port,
    // the connections stay open but carry nothing more: a peer that went silent
    freeze: () => {
      for (const socket of open) {
        socket.unpipe();
        socket.pause();
      }
      const count = open.size;
      open.clear();
      return count;
    },
    cut: () => {
      const count = open.size;
      for (const socket of open) socket.resetAndDestroy();
      open.clear();
      return count;
    },
    close: () => new Promise((resolve) => {
      for (const socket of all) socket.destroy();
      server.close(() => resolve());
    }),
    get connections() {
      return connections;
    },
  };
}
