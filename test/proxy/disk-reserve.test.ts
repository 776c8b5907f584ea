import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { CacheStore } from '../../proxy/cache-store.js';
import { placeImageFiles } from '../../plugin/restore-dir-files.js';
import { LinkAbortedError } from '../../src/link/link-errors.js';
import { describeOnHost } from '../support/host.js';
import { sessionPair } from '../support/link-traffic.js';
import { scratchDir } from '../support/scratch.js';
import { ChannelKind, openChannel } from '../../proxy/wire/index.js';

describeOnHost("a peer's migration and the destination's disk", ['root'], () => {
  const cleanups: Array<() => void> = [];
  afterEach(() => cleanups.splice(0).reverse().forEach((cleanup) => cleanup()));

  /** A 64 MiB filesystem of its own for the store. */
  function smallDisk(): string {
    const scratch = scratchDir('disk-reserve');
    cleanups.push(scratch.remove);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', scratch.path]);
    cleanups.push(() => execFileSync('umount', ['-l', scratch.path]));
    return scratch.path;
  }

  it('stops at the reserve it keeps for the rest of the host: the session is aborted with the reason, and the disk is not filled', async () => {
    const dir = smallDisk();
    const { dialer: source, listener: destination } = sessionPair();
    const store = new CacheStore(destination, dir, { diskReserveBytes: 40 * 1024 ** 2 });
    const sourceAborted = new Promise<LinkAbortedError>((resolve) => source.once('aborted', resolve));
    const file = openChannel(source, ChannelKind.IMAGE_FILE, 'pages-1.img');
    file.writable.on('error', () => {});
    // 60 MiB: past what the reserve leaves (24 MiB), and all but the whole filesystem
    for (let i = 0; i < 60 && source.isOpen; i++) {
      if (!file.writable.write(randomBytes(1024 ** 2))) await Promise.race([new Promise((resolve) => file.writable.once('drain', resolve)), sourceAborted]);
    }
    file.writable.end();
    const outcome = await store.complete.then(() => 'complete', (error: { code?: string }) => error.code);
    expect(outcome).toBe('HAUL_DISK_RESERVE');
    expect((await sourceAborted).reason).toMatch(/below the 40 MiB it keeps for the rest of the host/);
    const free = Number(execFileSync('df', ['--output=avail', '-B1', dir]).toString().split('\n')[1]);
    expect(free).toBeGreaterThan(8 * 1024 ** 2); // 4 MiB, had all 60 been written
  });

  it("copies pages into a restore directory on another filesystem only if they leave it its reserve", async () => {
    const restoreDir = smallDisk();
    const scratch = scratchDir('disk-reserve-from');
    cleanups.push(scratch.remove);
    writeFileSync(join(scratch.path, 'pages-1.img'), Buffer.alloc(8 * 1024 ** 2, 1));
    const refused = await placeImageFiles(scratch.path, restoreDir, ['pages-1.img'], { uid: 0, gid: 0 }).catch((error: { code?: string }) => error.code);
    expect(refused).toBe('HAUL_DISK_RESERVE'); // 64 MiB: below the 1 GiB reserve whatever comes
    expect(readdirSync(restoreDir)).toEqual([]);
  });

  it('refuses at once when the disk is below its reserve before anything arrives', async () => {
    const dir = smallDisk();
    const { dialer: source, listener: destination } = sessionPair();
    const sourceAborted = new Promise<LinkAbortedError>((resolve) => source.once('aborted', resolve));
    const store = new CacheStore(destination, dir, { diskReserveBytes: 128 * 1024 ** 2 });
    const outcome = await store.complete.then(() => 'complete', (error: { code?: string }) => error.code);
    expect(outcome).toBe('HAUL_DISK_RESERVE');
    expect((await sourceAborted).origin).toBe('peer');
  });
});
