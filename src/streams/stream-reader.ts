import type { Readable } from 'node:stream';

/** The stream ended inside a unit that had begun: a header, an entry or a page run. */
export class TruncatedStreamError extends Error {
  override readonly name = 'TruncatedStreamError';
}

/**
 * Pulls exact byte counts from a stream. It reads only as fast as its caller asks, so a slow
 * consumer of page data holds the sender back through the socket (backpressure) instead of
 * piling data up in memory.
 */
export class StreamReader {
  private readonly chunks: AsyncIterator<Buffer>;
  private pending: Buffer = Buffer.alloc(0);
  private ended = false;

  constructor(stream: Readable) {
    this.chunks = (stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>);
  }

  private async pull(): Promise<boolean> {
    if (this.ended) return false;
    const next = await this.chunks.next();
    if (next.done) {
      this.ended = true;
      return false;
    }
    this.pending = this.pending.length === 0 ? next.value : Buffer.concat([this.pending, next.value]);
    return true;
  }

  /** Exactly `size` bytes, or null if the stream ended cleanly before the first of them. */
  async readExactly(size: number, what: string): Promise<Buffer | null> {
    while (this.pending.length < size) {
      if (!(await this.pull())) {
        if (this.pending.length === 0) return null;
        throw new TruncatedStreamError(`stream ended ${this.pending.length} bytes into a ${size}-byte ${what}`);
      }
    }
    const bytes = this.pending.subarray(0, size);
    this.pending = this.pending.subarray(size);
    return bytes;
  }

  /** `size` bytes as the chunks in which they arrive; the stream must not end before the last. */
  async *readChunks(size: number, what: string): AsyncGenerator<Buffer, void, undefined> {
    let left = size;
    while (left > 0) {
      if (this.pending.length === 0 && !(await this.pull())) {
        throw new TruncatedStreamError(`stream ended ${size - left} bytes into ${size} bytes of ${what}`);
      }
      const take = Math.min(left, this.pending.length);
      const chunk = this.pending.subarray(0, take);
      this.pending = this.pending.subarray(take);
      left -= take;
      yield chunk;
    }
  }

  /** True once the stream has ended with nothing left unread. */
  async atEnd(): Promise<boolean> {
    return this.pending.length === 0 && !(await this.pull());
  }
}
