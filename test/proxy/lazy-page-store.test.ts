import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { LazyPageStore } from '../../proxy/lazy-page-store.js';
import { readPageRequests } from '../../proxy/lazy-wire.js';
import { PAGE_SIZE } from '../../src/criu/page-server/protocol.js';
import { pagesOf } from '../support/page-server-streams.js';
import { scratchDir } from '../support/scratch.js';

const PID = 7;
const BASE = 0x7f0000000000n;
const at = (page: number): bigint => BASE + BigInt(page * PAGE_SIZE);

/** `pages` pages from `first` on, cut into chunks of `chunk` bytes that split pages where they fall. */
async function* arriving(first: number, pages: number, chunk: number): AsyncGenerator<Buffer> {
  const bytes = pagesOf(at(first), pages);
  for (let offset = 0; offset < bytes.length; offset += chunk) yield bytes.subarray(offset, offset + chunk);
}

async function collect(pages: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of pages) chunks.push(chunk);
  return Buffer.concat(chunks);
}

const scratch = scratchDir('lazy-page-store');
afterAll(() => scratch.remove());
let spills = 0;
const spillPath = (): string => join(scratch.path, `spill-${spills++}`);

/** Reads pages 0 to `pages` as criu lazy-pages would, the rest each time, checking each answer's bytes. */
async function readsBackEveryPage(store: LazyPageStore, pages: number): Promise<void> {
  for (let taken = 0; taken < pages;) {
    const answer = await store.read(PID, at(taken), pages - taken);
    expect(await collect(answer.pages)).toEqual(pagesOf(at(taken), answer.nrPages));
    taken += answer.nrPages;
  }
}

const settledWithin = async (promise: Promise<unknown>, ms: number): Promise<boolean> =>
  Promise.race([promise.then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), ms))]);

describe('the lazy page store of a destination', () => {
  it('hands criu lazy-pages exactly the bytes that came, however the link cut them', async () => {
    const store = new LazyPageStore(new PassThrough(), spillPath());
    await store.add({ pid: PID, vaddr: at(0), nrPages: 10 }, arriving(0, 10, 5000), { pushed: true });
    const answer = await store.read(PID, at(2), 6);
    expect(answer.nrPages).toBe(6);
    expect(await collect(answer.pages)).toEqual(pagesOf(at(2), 6));
    expect(store.received).toBe(10);
  });

  it('answers short where the pages it holds end', async () => {
    const store = new LazyPageStore(new PassThrough(), spillPath());
    await store.add({ pid: PID, vaddr: at(0), nrPages: 4 }, arriving(0, 4, 3 * PAGE_SIZE), { pushed: true });
    const answer = await store.read(PID, at(1), 100);
    expect(answer.nrPages).toBe(3);
    expect(await collect(answer.pages)).toEqual(pagesOf(at(1), 3));
  });

  it('asks the source for a page it lacks, once, and answers when it comes', async () => {
    const requests = new PassThrough();
    const store = new LazyPageStore(requests, spillPath());
    const first = store.read(PID, at(50), 4);
    await new Promise((resolve) => setImmediate(resolve));
    requests.end();
    const asked = [];
    for await (const request of readPageRequests(requests)) asked.push(request);
    expect(asked).toEqual([{ run: { pid: PID, vaddr: at(50), nrPages: 4 }, again: false }]);
    await store.add({ pid: PID, vaddr: at(50), nrPages: 4 }, arriving(50, 4, 8192));
    // the faulting task goes on as soon as its page is here: the answer may be short, and CRIU asks again for the rest
    const answer = await first;
    expect(answer.nrPages).toBeGreaterThanOrEqual(1);
    expect(await collect(answer.pages)).toEqual(pagesOf(at(50), answer.nrPages));
  });

  it('asks the source again, saying so, for pages criu lazy-pages asks for a second time', async () => {
    // a task that forked while its pages were on the way asks for its parent's again; the store
    // let them go once handed over, and the source skips pages it sent unless told it is again
    const requests = new PassThrough();
    const store = new LazyPageStore(requests, spillPath());
    await store.add({ pid: PID, vaddr: at(0), nrPages: 8 }, arriving(0, 8, 3 * PAGE_SIZE), { pushed: true });
    expect(await collect((await store.read(PID, at(0), 8)).pages)).toEqual(pagesOf(at(0), 8));
    const second = store.read(PID, at(2), 4);
    const [request] = await readPageRequests(requests).next().then((next) => [next.value]);
    expect(request).toEqual({ run: { pid: PID, vaddr: at(2), nrPages: 4 }, again: true });
    await store.add({ pid: PID, vaddr: at(2), nrPages: 4 }, arriving(2, 4, 3 * PAGE_SIZE));
    const answer = await second;
    expect(await collect(answer.pages)).toEqual(pagesOf(at(2), answer.nrPages));
    expect(store.received).toBe(8);
  });

  it('holds a bounded amount of pushed pages, and takes more as criu lazy-pages takes them', async () => {
    const store = new LazyPageStore(new PassThrough(), spillPath(), 8 * PAGE_SIZE);
    const pushing = store.add({ pid: PID, vaddr: at(0), nrPages: 32 }, arriving(0, 32, 2 * PAGE_SIZE), { pushed: true });
    expect(await settledWithin(pushing, 50)).toBe(false);
    expect(store.received).toBeLessThanOrEqual(10);
    // a fault's answer never waits for room: criu lazy-pages may be waiting on it
    await store.add({ pid: PID, vaddr: at(100), nrPages: 16 }, arriving(100, 16, 4 * PAGE_SIZE));
    expect(await collect((await store.read(PID, at(100), 16)).pages)).toEqual(pagesOf(at(100), 16));
    await readsBackEveryPage(store, 32);
    await pushing;
    expect(store.received).toBe(48);
  });

  it('takes a wanted page from behind a full store, spilling what is ahead of it to disk', async () => {
    // CRIU may want a page the source pushed behind others it wants later (the restore's own
    // faults, or its tasks taken in another order): the source never sends a page twice
    const path = spillPath();
    const store = new LazyPageStore(new PassThrough(), path, 8 * PAGE_SIZE);
    const pushing = store.add({ pid: PID, vaddr: at(0), nrPages: 64 }, arriving(0, 64, 4 * PAGE_SIZE), { pushed: true });
    expect(await settledWithin(pushing, 50)).toBe(false);
    const wanted = await store.read(PID, at(40), 8);
    expect(await collect(wanted.pages)).toEqual(pagesOf(at(40), wanted.nrPages));
    expect(existsSync(path)).toBe(true);
    // what went to the spill file and what stayed in memory read back the same
    await readsBackEveryPage(store, 40);
    await store.close();
  });

  it('moves held pages nobody asks for to disk, so the push goes on without reads', async () => {
    // pages criu lazy-pages will never ask for (unmapped after the restore) must not hold up the rest
    const path = spillPath();
    const store = new LazyPageStore(new PassThrough(), path, 4 * PAGE_SIZE);
    const pushing = store.add({ pid: PID, vaddr: at(0), nrPages: 12 }, arriving(0, 12, 2 * PAGE_SIZE), { pushed: true });
    await pushing; // with no read at all (the test's own timeout bounds it)
    expect(store.evicted).toBeGreaterThanOrEqual(8);
    expect(existsSync(path)).toBe(true);
    // every page reads back the same, from disk or memory
    await readsBackEveryPage(store, 12);
    await store.close();
  });

  it('writes nothing to disk while criu lazy-pages keeps up with the push', async () => {
    const path = spillPath();
    const store = new LazyPageStore(new PassThrough(), path, 8 * PAGE_SIZE);
    const pushing = store.add({ pid: PID, vaddr: at(0), nrPages: 64 }, arriving(0, 64, 4 * PAGE_SIZE), { pushed: true });
    let taken = 0;
    while (taken < 64) {
      const answer = await store.read(PID, at(taken), 16);
      expect(await collect(answer.pages)).toEqual(pagesOf(at(taken), answer.nrPages));
      taken += answer.nrPages;
    }
    await pushing;
    expect(existsSync(path)).toBe(false);
  });

  it('drops what still comes once every page was served, so the source can finish pushing', async () => {
    const store = new LazyPageStore(new PassThrough(), spillPath(), 4 * PAGE_SIZE);
    const pushing = store.add({ pid: PID, vaddr: at(0), nrPages: 64 }, arriving(0, 64, PAGE_SIZE), { pushed: true });
    expect(await settledWithin(pushing, 50)).toBe(false);
    store.allServed();
    await pushing;
  });

  it('fails a read waiting for the source once the source is gone', async () => {
    const store = new LazyPageStore(new PassThrough(), spillPath());
    const waiting = store.read(PID, at(3), 1);
    store.fail(new Error('the link failed'));
    await expect(waiting).rejects.toThrow('the link failed');
  });
});
