import { chmod, mkdtemp, rename, rm } from 'node:fs/promises';
import type { Server } from 'node:net';
import { dirname, join } from 'node:path';

/**
 * Listens on the unix socket `path` such that nobody but this user can ever connect to it. The
 * socket is bound in a fresh directory of its own (mkdtemp: mode 0700), made 0600 there, and only
 * then renamed to `path` (a rename keeps the bound socket; connect(2) finds it by its new name).
 * Binding at `path` and chmod'ing after would leave a window in which the socket has the mode the
 * umask gives it; and setting process.umask around the bind would change the mode of every file
 * the process creates meanwhile, on libuv's threads too.
 */
export async function listenPrivately(server: Server, path: string): Promise<void> {
  const privateDir = await mkdtemp(join(dirname(path), '.haul-socket-'));
  try {
    const bound = join(privateDir, 's');
    await new Promise<void>((resolve, reject) => {
      const failed = (error: Error): void => reject(error);
      server.once('error', failed).listen(bound, () => (server.off('error', failed), resolve()));
    });
    await chmod(bound, 0o600);
    await rename(bound, path);
  } catch (error) {
    server.close();
    throw error;
  } finally {
    await rm(privateDir, { recursive: true, force: true });
  }
}
