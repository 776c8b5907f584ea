import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { IncomingChannel } from '../../src/link/channels.js';
import { LinkSession } from '../../src/link/session.js';
import { memoryTransportPair } from './memory-link.js';

/** Writes `data` in random chunk sizes, honouring backpressure and pausing now and then. */
export async function writeAll(channel: { writable: NodeJS.WritableStream & { writableNeedDrain?: boolean } }, data: Buffer, next: () => number): Promise<void> {
  const writable = channel.writable;
  for (let at = 0; at < data.length; ) {
    const size = 1 + Math.floor(next() * 70_000);
    const ok = writable.write(data.subarray(at, at + size));
    at += size;
    if (!ok) await new Promise((resolve) => writable.once('drain', resolve));
    if (next() < 0.05) await sleep(1);
  }
  await new Promise<void>((resolve, reject) => {
    writable.once('error', reject);
    writable.end(resolve);
  });
}

/** Reads a channel to its end, sometimes slowly. */
export async function readAll(channel: IncomingChannel, next: () => number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of channel.readable) {
    chunks.push(chunk as Buffer);
    if (next() < 0.05) await sleep(1 + Math.floor(next() * 3)); // a slow consumer now and then
  }
  return Buffer.concat(chunks);
}


/** Two sessions joined by an in-memory connection with the given per-frame delay. */
export function sessionPair(delayMs?: () => number) {
  const id = randomBytes(16);
  const dialer = new LinkSession('dialer', id);
  const listener = new LinkSession('listener', id);
  const pair = memoryTransportPair(delayMs);
  dialer.attach(pair.a);
  listener.attach(pair.b);
  return { dialer, listener, pair };
}

