import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { encodeImage, ImageReader, MAX_ENTRY_SIZE } from '../../src/criu/images/image-file.js';
import { TypeMagic, type ImageHeader } from '../../src/criu/images/magic.js';
import { entryFromMessage, entryToMessage, lazyRunsIn, PAGEMAP_HEADER, PagemapWriter, writePagemapsForEveryCriu } from '../../src/criu/images/pagemap.js';
import { Entries, ImageFormatError } from '../../src/criu/images/schemas.js';
import { PAGE_SIZE, PageFlag } from '../../src/criu/page-server/protocol.js';
import { scratchDir } from '../support/scratch.js';

const PSTREE: ImageHeader = { kind: 'common', typeMagic: TypeMagic.PSTREE };
const open = (bytes: Buffer, expected?: ImageHeader): Promise<ImageReader> => ImageReader.open(Readable.from([bytes]), 'test.img', expected);
async function entriesOf(bytes: Buffer, expected?: ImageHeader): Promise<Buffer[]> {
  const entries: Buffer[] = [];
  for await (const entry of (await open(bytes, expected)).entries()) entries.push(entry);
  return entries;
}

describe('image files', () => {
  it('start with the common magic and the type magic, or with the inventory magic alone', async () => {
    const pstree = encodeImage(PSTREE, []);
    expect(pstree.toString('hex')).toBe('19435654' + '30302750');
    expect((await open(pstree)).header).toEqual(PSTREE);
    expect(encodeImage({ kind: 'inventory' }, []).toString('hex')).toBe('16313158');
    expect((await open(encodeImage({ kind: 'service', typeMagic: TypeMagic.STATS }, []))).header).toEqual({ kind: 'service', typeMagic: TypeMagic.STATS });
  });

  it('hold length-prefixed entries until the end of the file', async () => {
    const entries = [
      Entries.pstreeEntry.encode({ pid: 10, ppid: 0, pgid: 10, sid: 10, threads: [10, 11] }),
      Entries.pstreeEntry.encode({ pid: 12, ppid: 10, pgid: 10, sid: 10, threads: [12] }),
    ];
    const read = await entriesOf(encodeImage(PSTREE, entries), PSTREE);
    expect(read).toEqual(entries);
    expect(Entries.pstreeEntry.decode(read[0]!)).toEqual({ pid: 10, ppid: 0, pgid: 10, sid: 10, threads: [10, 11] });
  });

  it('say clearly what is wrong with a file that is not the image expected', async () => {
    await expect(open(Buffer.alloc(0))).rejects.toThrow(/empty file/);
    await expect(open(Buffer.from('hello world'))).rejects.toThrow(/magic 0x6c6c6568 is not a CRIU image's/);
    await expect(open(encodeImage(PSTREE, []), PAGEMAP_HEADER)).rejects.toThrow(/wrong magic, expected common image 0x56084025 but found common image 0x50273030/);
    await expect(open(encodeImage(PSTREE, []).subarray(0, 6))).rejects.toThrow(ImageFormatError);
  });

  it('refuse an entry whose length runs past the end or past any sane size, without allocating it', async () => {
    const good = encodeImage(PSTREE, [Entries.pstreeEntry.encode({ pid: 1, ppid: 0, pgid: 1, sid: 1, threads: [] })]);
    await expect(entriesOf(good.subarray(0, good.length - 2))).rejects.toThrow(/entry length \d+ runs past the end/);
    const huge = Buffer.concat([encodeImage(PSTREE, []), Buffer.from([0xff, 0xff, 0xff, 0xff])]);
    await expect(entriesOf(huge)).rejects.toThrow(new RegExp(`larger than ${MAX_ENTRY_SIZE}`));
    await expect(entriesOf(Buffer.concat([encodeImage(PSTREE, []), Buffer.from([1, 0])]))).rejects.toThrow(ImageFormatError);
  });

  it('reject entries that do not decode as their schema', () => {
    expect(() => Entries.pstreeEntry.decode(Buffer.from([0x08, 0x01]))).toThrow(/pstree_entry: missing required 'ppid'/);
    expect(() => Entries.pagemapEntry.decode(Buffer.from([0xff, 0xff, 0xff]))).toThrow(ImageFormatError);
  });
});

describe('pagemap entries', () => {
  it('follow CRIU\'s compatibility rules: flags default from in_parent, 4.2\'s wide page count wins', () => {
    expect(entryFromMessage({ vaddr: 0x1000n, compat_nr_pages: 3 })).toEqual({ vaddr: 0x1000n, nrPages: 3, flags: PageFlag.PRESENT });
    expect(entryFromMessage({ vaddr: 0x1000n, compat_nr_pages: 3, in_parent: true })).toEqual({ vaddr: 0x1000n, nrPages: 3, flags: PageFlag.PARENT });
    expect(entryFromMessage({ vaddr: 0x1000n, compat_nr_pages: 0, flags: PageFlag.LAZY, nr_pages: 1n << 33n })).toEqual({
      vaddr: 0x1000n, nrPages: 2 ** 33, flags: PageFlag.LAZY,
    });
  });

  it('are written as CRIU ≤ 4.1 writes them and keep 64-bit addresses exact', () => {
    const entry = { vaddr: 0xffffffffff600000n, nrPages: 1, flags: PageFlag.PRESENT | PageFlag.LAZY };
    const bytes = Entries.pagemapEntry.encode(entryToMessage(entry));
    expect(entryFromMessage(Entries.pagemapEntry.decode(bytes))).toEqual(entry);
    expect(Entries.pagemapEntry.decode(bytes)).not.toHaveProperty('nr_pages');
  });

  it('name the runs a lazy dump left at the source: task pagemaps\' LAZY runs without data, no shared memory', async () => {
    const scratch = scratchDir('lazy-runs');
    try {
      const page = Buffer.alloc(PAGE_SIZE, 7);
      const task = await PagemapWriter.create(scratch.path, { type: 'pid', id: 12 }, 1);
      await task.add({ vaddr: 0x1000n, nrPages: 1, flags: PageFlag.PRESENT }, Readable.from([page]));
      await task.add({ vaddr: 0x400000n, nrPages: 3, flags: PageFlag.LAZY });
      await task.add({ vaddr: 0x7ff000n, nrPages: 1, flags: PageFlag.LAZY | PageFlag.PRESENT }, Readable.from([page]));
      await task.close();
      const other = await PagemapWriter.create(scratch.path, { type: 'pid', id: 3 }, 2);
      await other.add({ vaddr: 0x9000n, nrPages: 2, flags: PageFlag.LAZY });
      await other.close();
      const shmem = await PagemapWriter.create(scratch.path, { type: 'shmem', id: 5 }, 3);
      await shmem.add({ vaddr: 0n, nrPages: 4, flags: PageFlag.LAZY });
      await shmem.close();
      expect(await lazyRunsIn(scratch.path)).toEqual([
        { pid: 3, vaddr: 0x9000n, nrPages: 2 },
        { pid: 12, vaddr: 0x400000n, nrPages: 3 },
      ]);
    } finally {
      scratch.remove();
    }
  });

  it('are rewritten where CRIU 4.2 counted them in its own field, so that a CRIU before 4.2 finds the same pages', async () => {
    const scratch = scratchDir('pagemaps-for-every-criu');
    try {
      const head = Entries.pagemapHead.encode({ pages_id: 1 });
      const as42 = [
        { vaddr: 0x1000n, compat_nr_pages: 0, flags: PageFlag.PRESENT, nr_pages: 2n },
        { vaddr: 0x400000n, compat_nr_pages: 0, flags: PageFlag.LAZY, nr_pages: 300n },
      ];
      writeFileSync(`${scratch.path}/pagemap-12.img`, encodeImage(PAGEMAP_HEADER, [head, ...as42.map((entry) => Entries.pagemapEntry.encode(entry))]));
      const as41 = encodeImage(PAGEMAP_HEADER, [head, Entries.pagemapEntry.encode({ vaddr: 0x2000n, compat_nr_pages: 4, flags: PageFlag.PRESENT })]);
      writeFileSync(`${scratch.path}/pagemap-13.img`, as41);
      writeFileSync(`${scratch.path}/pages-1.img`, Buffer.alloc(2 * PAGE_SIZE));

      expect(await writePagemapsForEveryCriu(scratch.path)).toBe(1);
      const rewritten = (await entriesOf(readFileSync(`${scratch.path}/pagemap-12.img`), PAGEMAP_HEADER)).slice(1).map((bytes) => Entries.pagemapEntry.decode(bytes));
      // what CRIU 4.1 reads (compat_nr_pages), and nothing else changed
      expect(rewritten).toEqual([
        { vaddr: 0x1000n, compat_nr_pages: 2, flags: PageFlag.PRESENT },
        { vaddr: 0x400000n, compat_nr_pages: 300, flags: PageFlag.LAZY },
      ]);
      expect(readFileSync(`${scratch.path}/pagemap-13.img`)).toEqual(as41);
      expect(readdirSync(scratch.path).sort()).toEqual(['pagemap-12.img', 'pagemap-13.img', 'pages-1.img']);
    } finally {
      scratch.remove();
    }
  });
});
