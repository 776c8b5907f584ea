import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A fresh directory for one test's images and logs; kept when KEEP_SCRATCH is set, for post-mortems. */
export function scratchDir(label: string): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), `haul-${label}-`));
  return {
    path,
    remove: () => {
      // a process ended just before may still be writing its last file here: retry a little
      if (!process.env['KEEP_SCRATCH']) rmSync(path, { recursive: true, force: true, maxRetries: 20, retryDelay: 50 });
    },
  };
}

/** A loopback TCP port that was free a moment ago. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no TCP port');
  return address.port;
}
