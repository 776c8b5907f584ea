import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import type { LazyPagesClient } from '../../src/criu/index.js';
import { PAGE_SIZE } from '../../src/criu/page-server/protocol.js';
import { FaultQueue, MAX_SENT_AGAIN, moveLazyPages } from '../../proxy/lazy-pages-to-link.js';
import { writePageRequest } from '../../proxy/lazy-wire.js';
import { ChannelKind, openChannel } from '../../proxy/wire/index.js';
import { sessionPair } from '../support/link-traffic.js';

const PID = 9;
const VADDR = 0x7f0000000000n;

/** CRIU's lazy page server as the source's client sees it: every page it is asked for, counted. */
function pageServer(): { client: LazyPagesClient; pagesRead: () => number } {
  let read = 0;
  const client = {
    async get(_pid: number, _vaddr: bigint, nrPages: number) {
      read += nrPages;
      return { nrPages, pages: (async function* () { yield Buffer.alloc(nrPages * PAGE_SIZE, 1); })() };
    },
  };
  return { client: client as unknown as LazyPagesClient, pagesRead: () => read };
}

describe('the lazy source, asked for pages again', () => {
  it('sends a page again as often as CRIU may retry it, and fails a destination that asks without end', async () => {
    const { dialer: source, listener: destination } = sessionPair();
    const faults = new FaultQueue(source);
    // the destination reads what comes, and asks for the one page again and again
    destination.on('channel', (channel) => void channel.readable.resume());
    const requests = openChannel(destination, ChannelKind.LAZY_REQUESTS, 'lazy-requests').writable;
    const { client, pagesRead } = pageServer();
    const moved = moveLazyPages(source, client, [{ pid: PID, vaddr: VADDR, nrPages: 1 }], faults, { servesUntil: new Promise(() => {}) });
    while (pagesRead() < 1) await sleep(1); // pushed first, as it is in a migration
    for (let i = 0; i < MAX_SENT_AGAIN + 1; i++) await writePageRequest(requests, { pid: PID, vaddr: VADDR, nrPages: 1 }, { again: true });
    await expect(moved).rejects.toMatchObject({ code: 'HAUL_LAZY_WIRE', message: expect.stringContaining(`again ${MAX_SENT_AGAIN + 1} times`) });
    // the push, then every allowed resend; not the one past the bound
    expect(pagesRead()).toBe(1 + MAX_SENT_AGAIN);
    source.abort('test over');
  });
});
