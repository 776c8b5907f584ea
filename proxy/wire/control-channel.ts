import type { Readable, Writable } from 'node:stream';
import { StreamReader } from '../../src/streams/stream-reader.js';
import { writeChunk } from '../../src/streams/writable-writes.js';
import { MigrationMessageError, decodeControl, encodeControl, type Control } from './messages.js';

/** Control messages above this size are refused: they carry counters and reasons, never data. */
const MAX_CONTROL_MESSAGE = 64 * 1024;

/** Writes one control message to a control channel, length-prefixed, with backpressure. */
export async function sendControl(channel: Writable, message: Control): Promise<void> {
  const body = encodeControl(message);
  const length = Buffer.alloc(4);
  length.writeUInt32LE(body.length, 0);
  await writeChunk(channel, Buffer.concat([length, body]));
}

/** The control messages arriving on a channel, in order, until it ends. */
export async function* receiveControl(channel: Readable): AsyncGenerator<Control, void, undefined> {
  const reader = new StreamReader(channel);
  for (;;) {
    const length = await reader.readExactly(4, 'control message length');
    if (length === null) return;
    const size = length.readUInt32LE(0);
    if (size > MAX_CONTROL_MESSAGE) throw new MigrationMessageError(`control message of ${size} bytes`);
    const body = await reader.readExactly(size, 'control message');
    if (body === null) throw new MigrationMessageError('control channel ended inside a message');
    yield decodeControl(body);
  }
}
