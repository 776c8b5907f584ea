import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { encodeImage, ImageReader } from '../../src/criu/images/image-file.js';
import { TypeMagic } from '../../src/criu/images/magic.js';
import { PAGEMAP_HEADER } from '../../src/criu/images/pagemap.js';
import { Entries, ImageFormatError, type EntryCodec } from '../../src/criu/images/schemas.js';
import { receiveDump } from '../../src/criu/page-server/dump-receiver.js';
import { serveLazyPages } from '../../src/criu/page-server/lazy-pages-server.js';
import { Command, PageFlag, PageServerProtocolError, encodeHeader, type HeaderLayout } from '../../src/criu/page-server/protocol.js';
import { TruncatedStreamError } from '../../src/streams/stream-reader.js';
import { memoryConnection } from '../support/memory-connection.js';
import { CountingSink, SyntheticPageSource, dumpStream } from '../support/page-server-streams.js';
import { seededRandom } from '../support/seeded-random.js';


function mutate(valid: Buffer, next: () => number): Buffer {
  const pick = (n: number): number => Math.floor(next() * n);
  switch (pick(5)) {
    case 0: // random bytes
      return Buffer.from(Array.from({ length: pick(120) }, () => pick(256)));
    case 1: // truncated
      return valid.subarray(0, pick(valid.length));
    case 2: {
      // flipped bits
      const copy = Buffer.from(valid);
      for (let i = 0, n = 1 + pick(6); i < n && copy.length; i++) copy[pick(copy.length)]! ^= 1 << pick(8);
      return copy;
    }
    case 3: {
      // a hostile 32-bit word: huge counts and lengths, unknown commands, wrong magics
      const copy = Buffer.from(valid);
      if (copy.length >= 4) copy.writeUInt32LE([0xffffffff, 0x7fffffff, 0x1025, 0x00ff0006, 0][pick(5)]!, pick(copy.length - 3));
      return copy;
    }
    default: // spliced with garbage
      return Buffer.concat([valid.subarray(0, pick(valid.length)), Buffer.from(Array.from({ length: pick(64) }, () => pick(256)))]);
  }
}

/** Runs one input; it must end, within a second, in success or one of the expected errors. */
async function endsCleanly(run: () => Promise<unknown>, expected: ReadonlyArray<new (...args: never[]) => Error>, seed: number): Promise<'accepted' | 'rejected'> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`seed ${seed}: no answer within 1 s`)), 1000)));
  try {
    await Promise.race([run(), hang]);
    return 'accepted';
  } catch (error) {
    if (!expected.some((kind) => error instanceof kind)) {
      throw new Error(`seed ${seed}: unexpected ${(error as Error)?.name}: ${(error as Error)?.message}`);
    }
    return 'rejected';
  } finally {
    clearTimeout(timer);
  }
}

const ROUNDS = 2000;
const LAYOUTS: HeaderLayout[] = ['criu-4.1', 'criu-4.2'];

describe('fuzzing: bad input ends in a clear error, never a crash, a hang or an unbounded allocation', () => {
  it(`page-server dump streams (${ROUNDS} inputs)`, async () => {
    const next = seededRandom(0x5eed1);
    const outcomes = { accepted: 0, rejected: 0 };
    for (let round = 0; round < ROUNDS; round++) {
      const layout = LAYOUTS[round % 2]!;
      const valid = dumpStream(layout, [
        { target: { type: 'pid', id: 1 + (round % 50) }, entries: [
          { vaddr: 0x400000n, nrPages: 1 + (round % 3), flags: PageFlag.PRESENT },
          { vaddr: 0x800000n, nrPages: 2, flags: PageFlag.LAZY },
        ] },
      ]);
      const input = mutate(valid, next);
      const sink = new CountingSink();
      outcomes[await endsCleanly(() => receiveDump(memoryConnection(input).connection, round % 3 === 0 ? 'detect' : layout, sink), [PageServerProtocolError, TruncatedStreamError], round)]++;
      // the sink never holds more than the input carried
      expect(sink.bytes).toBeLessThanOrEqual(input.length);
    }
    // the mutations exercise both paths: most inputs are refused, some still decode
    expect(outcomes.rejected).toBeGreaterThan(ROUNDS / 2);
    expect(outcomes.accepted).toBeGreaterThan(0);
  });

  it(`lazy-pages request streams (${ROUNDS} inputs)`, async () => {
    const next = seededRandom(0x5eed2);
    const source = new SyntheticPageSource(new Map([[7, { vaddr: 0x10000n, nrPages: 64 }]]));
    class NoSuchPage extends Error {}
    const strictSource = {
      read: (pid: number, vaddr: bigint, nrPages: number) => source.read(pid, vaddr, nrPages).catch((error: Error) => Promise.reject(new NoSuchPage(error.message))),
    };
    for (let round = 0; round < ROUNDS; round++) {
      const layout = LAYOUTS[round % 2]!;
      const valid = Buffer.concat([
        encodeHeader({ cmd: Command.GET, nrPages: 1n, vaddr: 0x10000n + BigInt((round % 64) * 4096), dstId: 7n }, layout),
        encodeHeader({ cmd: Command.GET, nrPages: 16n, vaddr: 0x20000n, dstId: 7n }, layout),
        encodeHeader({ cmd: Command.CLOSE, nrPages: 0n, vaddr: 0n, dstId: 0n }, layout),
      ]);
      await endsCleanly(() => serveLazyPages(memoryConnection(mutate(valid, next)).connection, layout, strictSource), [PageServerProtocolError, TruncatedStreamError, NoSuchPage], round);
    }
  });

  it(`image files and their entries (${ROUNDS} inputs)`, async () => {
    const next = seededRandom(0x5eed3);
    const samples: Array<{ bytes: Buffer; codecs: EntryCodec<unknown>[] }> = [
      { bytes: encodeImage({ kind: 'common', typeMagic: TypeMagic.PSTREE }, [Entries.pstreeEntry.encode({ pid: 1, ppid: 0, pgid: 1, sid: 1, threads: [1, 2] })]), codecs: [Entries.pstreeEntry] },
      { bytes: encodeImage(PAGEMAP_HEADER, [Entries.pagemapHead.encode({ pages_id: 1 }), Entries.pagemapEntry.encode({ vaddr: 0x400000n, compat_nr_pages: 4, flags: 4 })]), codecs: [Entries.pagemapHead, Entries.pagemapEntry] },
      { bytes: encodeImage({ kind: 'inventory' }, [Entries.inventoryEntry.encode({ img_version: 2, fdinfo_per_id: true, root_ids: { vm_id: 1, files_id: 1, fs_id: 1, sighand_id: 1 } })]), codecs: [Entries.inventoryEntry] },
    ];
    for (let round = 0; round < ROUNDS; round++) {
      const sample = samples[round % samples.length]!;
      const input = mutate(sample.bytes, next);
      await endsCleanly(async () => {
        const image = await ImageReader.open(Readable.from([input]), `fuzz-${round}.img`);
        let index = 0;
        for await (const entry of image.entries()) sample.codecs[Math.min(index++, sample.codecs.length - 1)]!.decode(entry);
      }, [ImageFormatError], round);
    }
  });
});
