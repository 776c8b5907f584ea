import { PassThrough, Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { pageChannelName, readPageRecords, targetOfPageChannel, writePageRecord } from '../../proxy/page-stream.js';
import { pageRunRecord } from '../../proxy/wire/page-records.js';
import { PageFlag } from '../../src/criu/page-server/protocol.js';
import { TruncatedStreamError } from '../../src/streams/stream-reader.js';
import { pagesOf } from '../support/page-server-streams.js';

async function* once(bytes: Buffer): AsyncGenerator<Buffer> {
  yield bytes;
}

describe('a pagemap on a link channel', () => {
  it('is named after its image, both kinds', () => {
    expect(pageChannelName({ type: 'pid', id: 42 })).toBe('pagemap-42');
    expect(pageChannelName({ type: 'shmem', id: 1848 })).toBe('pagemap-shmem-1848');
    expect(targetOfPageChannel('pagemap-42')).toEqual({ type: 'pid', id: 42 });
    expect(targetOfPageChannel('pagemap-shmem-1848')).toEqual({ type: 'shmem', id: 1848 });
    expect(() => targetOfPageChannel('../../etc/passwd')).toThrow(/does not name a pagemap/);
  });

  it('carries entries and exactly their pages, in order', async () => {
    const channel = new PassThrough();
    const entries = [
      { vaddr: 0x400000n, nrPages: 2, flags: PageFlag.PRESENT },
      { vaddr: 0x800000n, nrPages: 5, flags: PageFlag.LAZY },
      { vaddr: 0x7f0000000000n, nrPages: 3, flags: PageFlag.PRESENT | PageFlag.LAZY },
    ];
    for (const entry of entries) await writePageRecord(channel, entry, entry.flags & PageFlag.PRESENT ? once(pagesOf(entry.vaddr, entry.nrPages)) : undefined);
    channel.end();
    const seen = [];
    for await (const { entry, pages } of readPageRecords(channel)) {
      const chunks: Buffer[] = [];
      for await (const chunk of pages ?? []) chunks.push(chunk);
      seen.push({ entry, pages: Buffer.concat(chunks) });
    }
    expect(seen.map((s) => s.entry)).toEqual(entries);
    expect(seen[0]!.pages).toEqual(pagesOf(0x400000n, 2));
    expect(seen[1]!.pages.length).toBe(0);
    expect(seen[2]!.pages).toEqual(pagesOf(0x7f0000000000n, 3));
  });

  it('refuses a stream that ends inside a record or its pages', async () => {
    const record = pageRunRecord({ vaddr: 0x400000n, nr_pages: 4, flags: PageFlag.PRESENT });
    const drain = async (bytes: Buffer): Promise<void> => {
      for await (const { pages } of readPageRecords(Readable.from([bytes]))) for await (const _ of pages ?? []);
    };
    await expect(drain(record.subarray(0, record.length - 1))).rejects.toThrow(TruncatedStreamError);
    await expect(drain(Buffer.concat([record, Buffer.alloc(4096)]))).rejects.toThrow(/ended 4096 bytes into 16384 bytes of pages/);
  });
});
