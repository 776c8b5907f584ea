import { createServer, connect, type Server, type Socket } from 'node:net';

/**
 * A loopback TCP proxy that forwards to `target` and, when told, cuts every open connection at once
 * (both directions, no goodbye), as a network outage would. New connections go through again.
 */
export async function cuttingProxy(target: number): Promise<{ port: number; cut(): number; close(): Promise<void>; connections: number }> {
  const open = new Set<Socket>();
  let connections = 0;
  const server: Server = createServer((client) => {
    connections++;
    const upstream = connect(target, '127.0.0.1');
    open.add(client);
    open.add(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no port');
  return {
    port: address.port,
    cut: () => {
      const count = open.size;
      for (const socket of open) socket.resetAndDestroy();
      open.clear();
      return count;
    },
    close: () => new Promise((resolve) => {
      for (const socket of open) socket.destroy();
      server.close(() => resolve());
    }),
    get connections() {
      return connections;
    },
  };
}
