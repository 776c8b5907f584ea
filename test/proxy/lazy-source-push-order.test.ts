import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import type { LazyPagesClient } from '../../src/criu/index.js';
import { PAGE_SIZE } from '../../src/criu/page-server/protocol.js';
import { FaultQueue, moveLazyPages } from '../../proxy/lazy-pages-to-link.js';
import { sessionPair } from '../support/link-traffic.js';

/** CRIU's lazy page server as the source's client sees it: the requests, in the order asked. */
function pageServer(): { client: LazyPagesClient; asked: Array<{ vaddr: bigint; nrPages: number }> } {
  const asked: Array<{ vaddr: bigint; nrPages: number }> = [];
  const client = {
    async get(_pid: number, vaddr: bigint, nrPages: number) {
      asked.push({ vaddr, nrPages });
      return { nrPages, pages: (async function* () { yield Buffer.alloc(nrPages * PAGE_SIZE, 1); })() };
    },
  };
  return { client: client as unknown as LazyPagesClient, asked };
}

describe('the lazy source pushing pages nobody asked for', () => {
  it("sends a process's small runs (stack, data) before its bulk memory, and only those while the restore runs", async () => {
    const { dialer: source, listener: destination } = sessionPair();
    destination.on('channel', (channel) => void channel.readable.resume());
    const faults = new FaultQueue(source);
    const { client, asked } = pageServer();
    const bulk = { pid: 7, vaddr: 0x7f0000000000n, nrPages: 4096 };
    const heap = { pid: 7, vaddr: 0x600000n, nrPages: 34 };
    const stack = { pid: 7, vaddr: 0x7ffd00000000n, nrPages: 3 };
    let restored = (): void => {};
    const pushFrom = new Promise<void>((resolve) => (restored = resolve));
    try {
      const moved = moveLazyPages(source, client, [heap, bulk, stack], faults, { pushFrom });
      // the small runs go at once (however busy the machine); the bulk does not follow while held
      await expect.poll(() => asked.length, { timeout: 10_000 }).toBe(2);
      await sleep(50);
      expect(asked).toEqual([{ vaddr: stack.vaddr, nrPages: 3 }, { vaddr: heap.vaddr, nrPages: 34 }]);
      restored();
      expect(await moved).toBe(4096 + 34 + 3);
      const bulkRequests = asked.slice(2);
      expect(bulkRequests.length).toBeGreaterThan(0);
      expect(bulkRequests.every((request) => request.vaddr >= bulk.vaddr && request.vaddr < stack.vaddr)).toBe(true);
    } finally {
      source.abort('test over');
    }
  });
});
