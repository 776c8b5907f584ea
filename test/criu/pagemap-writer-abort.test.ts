import { readdirSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { PagemapWriter } from '../../src/criu/images/pagemap.js';
import { PAGE_SIZE, PageFlag } from '../../src/criu/page-server/protocol.js';
import { scratchDir } from '../support/scratch.js';

const scratch: Array<{ remove(): void }> = [];
afterEach(() => scratch.splice(0).forEach((dir) => dir.remove()));

/** Page data that stops with `error` after `chunks` chunks, as a page stream does when its session aborts. */
async function* pagesThatFail(chunks: number, error: Error): AsyncGenerator<Buffer> {
  for (let i = 0; i < chunks; i++) yield Buffer.alloc(PAGE_SIZE * 64, i);
  throw error;
}

describe('a pagemap being written when its source goes away', () => {
  it('is dropped without an error escaping, while its writes are still on their way to disk', async () => {
    const dir = scratchDir('pagemap-abort');
    scratch.push(dir);
    const writer = await PagemapWriter.create(dir.path, { type: 'pid', id: 1 }, 0x10001);
    const aborted = new Error('the link session was aborted');
    // three chunks: the first is in fs.write, the others wait in the stream's buffer (then writev)
    await expect(writer.add({ vaddr: 0x400000n, nrPages: 64 * 4, flags: PageFlag.PRESENT }, pagesThatFail(3, aborted))).rejects.toBe(aborted);
    // at once, as CacheStore does: fs' callback for the write in flight has not run yet, and its
    // ERR_STREAM_DESTROYED became an 'error' on a stream nobody listened to, taking the process down
    await writer.destroy();
    expect(readdirSync(dir.path).sort()).toEqual(['pagemap-1.img', 'pages-65537.img']);
  });

  it('refuses more writes once dropped, instead of waiting for a drain that never comes', async () => {
    const dir = scratchDir('pagemap-abort');
    scratch.push(dir);
    const writer = await PagemapWriter.create(dir.path, { type: 'pid', id: 1 }, 0x10001);
    await writer.destroy();
    await expect(writer.add({ vaddr: 0x400000n, nrPages: 1, flags: PageFlag.LAZY })).rejects.toThrow();
    await expect(writer.close()).rejects.toThrow();
  });
});
