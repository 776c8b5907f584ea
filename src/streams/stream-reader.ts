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
  // what has arrived and is not yet read, as it arrived: joined only when a read spans chunks, and
  // then once, since joining on every arrival copied a large read over and over
  private readonly queued: Buffer[] = [];
  private queuedBytes = 0;
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
    if (next.value.length > 0) {
      this.queued.push(next.value);
      this.queuedBytes += next.value.length;
    }
    return true;
  }

  /** Takes `size` queued bytes (no more than are queued). */
  private take(size: number): Buffer {
    const first = this.queued[0]!;
    let bytes: Buffer;
    if (first.length >= size) {
      bytes = first.subarray(0, size);
      if (first.length === size) this.queued.shift();
      else this.queued[0] = first.subarray(size);
    } else {
      bytes = Buffer.allocUnsafe(size);
      let at = 0;
      while (at < size) {
        const chunk = this.queued[0]!;
        const part = Math.min(chunk.length, size - at);
        chunk.copy(bytes, at, 0, part);
        at += part;
        if (part === chunk.length) this.queued.shift();
        else this.queued[0] = chunk.subarray(part);
      }
    }
    this.queuedBytes -= size;
    return bytes;
  }

  /** Exactly `size` bytes, or null if the stream ended cleanly before the first of them. */
  async readExactly(size: number, what: string): Promise<Buffer | null> {
    while (this.queuedBytes < size) {
      if (!(await this.pull())) {
        if (this.queuedBytes === 0) return null;
        throw new TruncatedStreamError(`stream ended ${this.queuedBytes} bytes into a ${size}-byte ${what}`);
      }
    }
    return size === 0 ? Buffer.alloc(0) : this.take(size);
  }

  /** `size` bytes as the chunks in which they arrive; the stream must not end before the last. */
  async *readChunks(size: number, what: string): AsyncGenerator<Buffer, void, undefined> {
    let left = size;
    while (left > 0) {
      if (this.queuedBytes === 0 && !(await this.pull())) {
        throw new TruncatedStreamError(`stream ended ${size - left} bytes into ${size} bytes of ${what}`);
      }
      if (this.queuedBytes === 0) continue;
      const chunk = this.take(Math.min(left, this.queued[0]!.length));
      left -= chunk.length;
      yield chunk;
    }
  }

  /** True once the stream has ended with nothing left unread. */
  async atEnd(): Promise<boolean> {
    return this.queuedBytes === 0 && !(await this.pull());
  }
}
