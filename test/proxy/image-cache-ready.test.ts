import { execFileSync } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { ImageCache, type CacheEvent } from '../../proxy/image-cache.js';
import { hostHandshake } from '../../proxy/index.js';
import { dialLink } from '../../src/link/dialer.js';
import type { EndpointOptions } from '../../src/link/endpoint-options.js';
import type { LinkSession } from '../../src/link/session.js';
import { ChannelPriority } from '../../src/link/index.js';
import { scratchDir } from '../support/scratch.js';
import { sendControl, ControlInbox, ChannelKind, openChannel } from '../../proxy/wire/index.js';

const host = { criu_version: '4.1.1', page_size: 4096, architecture: process.arch, capabilities: ['pre-copy', 'lazy'], haul_version: '0', role: 'cache' };
const endpoint: EndpointOptions = { insecure: true, application: hostHandshake(host) };

describe('haul cache taking a migration', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  async function cache(options: { idleMs?: number; commitWithinMs?: number } = {}): Promise<{ port: number; events: CacheEvent[]; dir: string }> {
    const scratch = scratchDir('cache-ready');
    cleanups.push(() => scratch.remove());
    const events: CacheEvent[] = [];
    // a CRIU that fails every restore: what matters here is that the cache gets as far as one
    const started = await ImageCache.start({ ...endpoint, address: '127.0.0.1', port: 0, dir: join(scratch.path, 'cache'), criuBinary: '/bin/false', onEvent: (event) => events.push(event), ...options });
    cleanups.push(() => started.close());
    return { port: started.port, events, dir: scratch.path };
  }

  async function dial(port: number): Promise<{ session: LinkSession; answers: ControlInbox; control: Writable }> {
    const { session } = await dialLink(`ws://127.0.0.1:${port}`, endpoint);
    cleanups.push(() => session.isOpen && session.abort('test over'));
    const answers = new ControlInbox(session);
    const control = openChannel(session, ChannelKind.CONTROL, 'migration').writable;
    return { session, answers, control };
  }

  /** Occupies every thread of libuv's pool (each blocks opening a FIFO nobody writes) until released. */
  async function busyThreadPool(dir: string): Promise<() => Promise<void>> {
    const fifos = Array.from({ length: Number(process.env['UV_THREADPOOL_SIZE'] ?? 4) }, (_, at) => join(dir, `busy-${at}`));
    execFileSync('mkfifo', fifos);
    const opening: Array<Promise<FileHandle>> = fifos.map((fifo) => open(fifo, 'r'));
    return async () => {
      for (const fifo of fifos) closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
      await Promise.all(opening.map(async (opened) => (await opened).close()));
    };
  }

  it("hears every channel the source opens at once, even while Node's thread pool is busy", async () => {
    const { port, dir } = await cache();
    const release = await busyThreadPool(dir);
    let released = false;
    cleanups.push(() => released || release());
    const { answers, control } = await dial(port);
    await sendControl(control, { migration_start: { mode: 'pre-copy', pid: 1, criu_version: '4.1.1', instance: '', migration_id: '', source_host: '', restore_timeout_ms: 0, manager_addresses: [] } });
    await sendControl(control, { images_complete: { files: 0, page_streams: 0, bytes: 0n, filesystem_tars: 0 } });
    await new Promise((resolve) => setTimeout(resolve, 300)); // it all reached the cache meanwhile
    released = true;
    await release();
    // the image set (empty) was complete: the cache got as far as the restore, which failed
    expect(await answers.next('restore_result', 10_000)).toMatchObject({ ok: false, error: expect.not.stringMatching(/no progress|did not/) });
  }, 20_000);

  it('gives up on a source that stops sending before the image set is complete', async () => {
    const { port, events } = await cache({ idleMs: 500 });
    const { answers, control } = await dial(port);
    await sendControl(control, { migration_start: { mode: 'pre-copy', pid: 1, criu_version: '4.1.1', instance: '', migration_id: '', source_host: '', restore_timeout_ms: 0, manager_addresses: [] } });
    expect(await answers.next('restore_result', 10_000)).toMatchObject({ ok: false, error: expect.stringMatching(/no progress/) });
    expect(events.some((event) => event.kind === 'failed')).toBe(true);
  }, 20_000);

  it('refuses a channel of a kind no migration has, and says so to the source', async () => {
    const { port, events } = await cache();
    const { session, answers, control } = await dial(port);
    await sendControl(control, { migration_start: { mode: 'pre-copy', pid: 1, criu_version: '4.1.1', instance: '', migration_id: '', source_host: '', restore_timeout_ms: 0, manager_addresses: [] } });
    // the link carries any kind; what a migration's channels may be is the engine's to check
    session.openChannel(42, 'unheard-of', ChannelPriority.LAST).writable.end(Buffer.from('x'));
    expect(await answers.next('restore_result', 10_000)).toMatchObject({ ok: false, error: expect.stringMatching(/does not take unheard-of \(kind 42\)/) });
    expect(events.some((event) => event.kind === 'failed')).toBe(true);
  }, 20_000);
});
