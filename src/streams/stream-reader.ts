import type { Readable } from 'node:stream';

/** The stream ended inside a unit that had begun: a header, an entry or a page run. */
export class TruncatedStreamError extends Error {
  override readonly name = 'TruncatedStreamError';
}

/** The stream was destroyed before its end, without an error of its own. */
export class StreamClosedEarlyError extends Error {
  override readonly name = 'StreamClosedEarlyError';
  readonly code = 'HAUL_STREAM_CLOSED_EARLY';
}

/**
 * How far a reader takes bytes off its stream ahead of its caller. Past it the stream is paused, so
 * a slow consumer of page data holds the sender back through the socket or the link's credit
 * (backpressure) instead of piling data up in memory.
 */
const READ_AHEAD = 256 * 1024;

/**
 * Pulls exact byte counts from a stream. It takes the stream's chunks one by one, in flowing mode:
 * a paused stream's read(), which the stream's async iterator calls, joins everything buffered into
 * one new buffer, a copy of every byte (node's lib/internal/streams/readable.js fromList), which
 * cost the destination a third of a second and as much again in garbage collection per GiB.
 */
export class StreamReader {
  // what has arrived and is not yet read, as it arrived: joined only when a read spans chunks, and
  // then once, since joining on every arrival copied a large read over and over
  private readonly queued: Buffer[] = [];
  private queuedBytes = 0;
  private ended = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;

  constructor(private readonly stream: Readable) {
    if (stream.readableEnded) this.ended = true;
    else if (stream.destroyed) this.failure = stream.errored ?? new StreamClosedEarlyError('the stream was closed before it was read');
    // paused first: a 'data' listener then leaves it paused until the first read resumes it
    stream.pause();
    stream.on('data', (chunk: Buffer) => {
      if (chunk.length === 0) return;
      this.queued.push(chunk);
      this.queuedBytes += chunk.length;
      if (this.queuedBytes >= READ_AHEAD) stream.pause();
      this.wakeUp();
    });
    stream.once('end', () => {
      this.ended = true;
      this.wakeUp();
    });
    stream.once('error', (error: Error) => {
      this.failure ??= error;
      this.wakeUp();
    });
    stream.once('close', () => {
      if (!this.ended) this.failure ??= stream.errored ?? new StreamClosedEarlyError('the stream was closed before its end');
      this.wakeUp();
    });
  }

  private wakeUp(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /** Waits for more bytes; false once the stream has ended. A failed stream's error is thrown. */
  private async pull(): Promise<boolean> {
    const before = this.queuedBytes;
    while (this.queuedBytes === before) {
      if (this.failure) throw this.failure;
      if (this.ended) return false;
      const woken = new Promise<void>((resolve) => (this.wake = resolve));
      this.stream.resume();
      await woken;
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
