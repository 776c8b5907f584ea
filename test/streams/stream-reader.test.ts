import { PassThrough, Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { StreamClosedEarlyError, StreamReader, TruncatedStreamError } from '../../src/streams/stream-reader.js';

async function collect(chunks: AsyncIterable<Buffer>): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const chunk of chunks) out.push(chunk);
  return out;
}

describe('reading exact byte counts from a stream', () => {
  it('hands page data on in the chunks it came in, never joined into a copy', async () => {
    const chunks = [Buffer.alloc(4096, 1), Buffer.alloc(4096, 2), Buffer.alloc(4096, 3)];
    const stream = new PassThrough();
    // all three wait in the stream's buffer before the first read, as they do behind a busy reader
    for (const chunk of chunks) stream.write(chunk);
    stream.end();
    const reader = new StreamReader(stream);
    const read = await collect(reader.readChunks(3 * 4096, 'pages'));
    expect(read).toHaveLength(3);
    read.forEach((chunk, i) => expect(chunk.buffer).toBe(chunks[i]!.buffer));
    expect(await reader.atEnd()).toBe(true);
  });

  it('joins only a read that spans chunks, and takes no more off the stream than it is asked plus a bound', async () => {
    const stream = new PassThrough({ highWaterMark: 64 * 1024 });
    const reader = new StreamReader(stream);
    stream.write(Buffer.from('ab'));
    stream.write(Buffer.from('cd'));
    expect((await reader.readExactly(3, 'header'))!.toString()).toBe('abc');
    expect((await reader.readExactly(1, 'rest'))!.toString()).toBe('d');
    // a writer that is not read from is held back: its writes stop being taken
    let accepted = 0;
    while (stream.write(Buffer.alloc(64 * 1024)) && accepted < 64) accepted++;
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(stream.writableNeedDrain).toBe(true);
    expect(accepted).toBeLessThan(64);
  });

  it('says where a stream ended early, and passes on a stream\'s error or an early close', async () => {
    const short = Readable.from([Buffer.from('abc')], { objectMode: false });
    await expect(new StreamReader(short).readExactly(8, 'record')).rejects.toThrow(TruncatedStreamError);
    const failing = new PassThrough();
    const failed = new StreamReader(failing).readExactly(4, 'record');
    failing.destroy(new Error('socket reset'));
    await expect(failed).rejects.toThrow('socket reset');
    const closing = new PassThrough();
    const closed = new StreamReader(closing).readExactly(4, 'record');
    closing.destroy();
    await expect(closed).rejects.toThrow(StreamClosedEarlyError);
    expect(await new StreamReader(Readable.from([])).readExactly(4, 'record')).toBeNull();
  });
});
