import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';

/** The stream was destroyed before it could take or finish what was written. */
export class StreamClosedError extends Error {
  override readonly name = 'StreamClosedError';
  readonly code = 'HAUL_STREAM_CLOSED';
}

/**
 * Writes `bytes` and resolves when the stream can take more: at once below its high water mark,
 * else on 'drain'. Rejects (never waits for good) when the stream fails or is destroyed meanwhile
 * or already was: a destroyed stream emits no 'drain' (node's lib/internal/streams/writable.js).
 */
export function writeChunk(stream: Writable, bytes: Buffer): Promise<void> {
  if (stream.destroyed || stream.errored) return Promise.reject(stream.errored ?? new StreamClosedError('the stream was closed before this write'));
  if (stream.write(bytes)) return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    const settle = (error?: Error): void => {
      stream.off('drain', onDrain);
      stream.off('error', onError);
      stream.off('close', onClose);
      if (error) reject(error);
      else resolve();
    };
    const onDrain = (): void => settle();
    const onError = (error: Error): void => settle(error);
    const onClose = (): void => settle(stream.errored ?? new StreamClosedError('the stream was closed while a write waited'));
    stream.on('drain', onDrain);
    stream.on('error', onError);
    stream.on('close', onClose);
  });
}

/** Ends the stream and resolves once all of it is written and closed; rejects if it fails or was destroyed. */
export async function finishWriting(stream: Writable): Promise<void> {
  if (stream.destroyed && !stream.writableFinished) throw stream.errored ?? new StreamClosedError('the stream was closed before it was finished');
  stream.end();
  await finished(stream);
}

/**
 * Destroys the stream and resolves once it is closed, whatever it failed with: a write in flight
 * when it is destroyed fails with ERR_STREAM_DESTROYED, which node then emits as 'error' (fs
 * WriteStream's _destroy in lib/internal/fs/streams.js waits for the write, then closes with its
 * error), so the caller must not have to listen for that one itself.
 */
export async function discardWriting(stream: Writable): Promise<void> {
  const closed = finished(stream).catch(() => {});
  stream.destroy();
  await closed;
}
