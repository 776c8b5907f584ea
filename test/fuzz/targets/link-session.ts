import { crc32 } from 'node:zlib';
import { FRAME_HEADER_SIZE, FrameType, encodeFrame, type Frame, type FrameCrc } from '../../../src/link/frame.js';
import { Messages } from '../../../src/link/messages.js';
import { INITIAL_CHANNEL_WINDOW, LinkAbortedError, LinkSession, type FrameTransport } from '../../../src/link/session.js';
import { streamDigest } from '../../../src/link/stream-digest.js';
import { InvariantBroken, type FuzzTarget } from '../fuzzer.js';
import { CRC_FREE_KINDS, ChannelKind } from '../../../proxy/wire/index.js';

const SESSION_ID = Buffer.alloc(16, 0x42);

/** The input as the frames of one connection: each frame as long as its length field says, the last one what is left. */
function framesOf(input: Buffer): Buffer[] {
  const frames: Buffer[] = [];
  for (let at = 0; at < input.length; ) {
    const length = input.length - at >= FRAME_HEADER_SIZE ? input.readUInt32LE(at + 16) : 0;
    const end = Math.min(input.length, at + FRAME_HEADER_SIZE + length);
    frames.push(input.subarray(at, end));
    at = end;
  }
  return frames;
}

function digestOf(bytes: Buffer): Buffer {
  const digest = streamDigest();
  digest.update(bytes);
  return digest.digest();
}

const frame = (type: Frame['type'], channel: number, offset: bigint, payload: Buffer, kind: Frame['kind'] = 0, crc: FrameCrc = 'whole'): Buffer => encodeFrame({ type, kind, channel, offset, payload }, crc);
const credit = (limit: bigint): Buffer => {
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64LE(limit, 0);
  return bytes;
};

/** Frames a dialler sends a listener: channels opened, filled, ended or reset, and the end of the session. */
function sessionSeeds(): Buffer[] {
  const text = Buffer.from('control message bytes');
  const page = Buffer.alloc(4096, 0xa5);
  const window = Buffer.alloc(INITIAL_CHANNEL_WINDOW, 0x3c);
  return [
    Buffer.concat([
      frame(FrameType.OPEN, 1, 0n, Buffer.from('control'), ChannelKind.CONTROL),
      frame(FrameType.DATA, 1, 0n, text.subarray(0, 7), ChannelKind.CONTROL),
      frame(FrameType.DATA, 1, 7n, text.subarray(7), ChannelKind.CONTROL),
      frame(FrameType.END, 1, BigInt(text.length), digestOf(text), ChannelKind.CONTROL),
      frame(FrameType.CLOSE, 0, 0n, Buffer.alloc(0)),
    ]),
    Buffer.concat([
      frame(FrameType.OPEN, 3, 0n, Buffer.from('pagemap-1'), ChannelKind.PAGES),
      frame(FrameType.DATA, 3, 0n, page, ChannelKind.PAGES, 'header'),
      frame(FrameType.DATA, 3, 0n, page, ChannelKind.PAGES), // replayed after a reconnect
      frame(FrameType.RESET, 3, 4096n, Buffer.from('the dump failed'), ChannelKind.PAGES),
      frame(FrameType.OPEN, 5, 0n, Buffer.from('lazy'), ChannelKind.LAZY_REQUESTS),
      frame(FrameType.DATA, 5, 0n, Buffer.alloc(16, 1), ChannelKind.LAZY_REQUESTS),
    ]),
    // a sender that spends exactly the credit a channel opens with: one byte more is an overrun
    Buffer.concat([
      frame(FrameType.OPEN, 7, 0n, Buffer.from('pages-2'), ChannelKind.PAGES),
      frame(FrameType.DATA, 7, 0n, window.subarray(0, INITIAL_CHANNEL_WINDOW / 2), ChannelKind.PAGES, 'header'),
      frame(FrameType.DATA, 7, BigInt(INITIAL_CHANNEL_WINDOW / 2), window.subarray(INITIAL_CHANNEL_WINDOW / 2), ChannelKind.PAGES, 'header'),
      frame(FrameType.END, 7, BigInt(INITIAL_CHANNEL_WINDOW), digestOf(window), ChannelKind.PAGES),
    ]),
    Buffer.concat([
      frame(FrameType.CREDIT, 2, 0n, credit(8n * 1024n * 1024n)),
      frame(FrameType.ABORT, 0, 0n, Messages.abort.encode({ reason: 'the restore failed', origin: 'dialer', code: '' })),
    ]),
  ];
}

export const linkSession: FuzzTarget = {
  name: 'link-session',
  decoder: 'src/link/session.ts LinkSession (a listener fed a dialler\'s frames over a fake connection)',
  expected: [LinkAbortedError],
  seeds: sessionSeeds,
  repair(input) {
    // every frame's length and CRC made right, so the session, not the frame decoder, meets them
    // (a CRC of the header alone kept where the frame asked for one and may have it)
    return Buffer.concat(
      framesOf(input).map((bytes) => {
        if (bytes.length < FRAME_HEADER_SIZE) return bytes;
        const copy = Buffer.from(bytes);
        copy.writeUInt32LE(copy.length - FRAME_HEADER_SIZE, 16);
        const headerOnly = (copy.readUInt16LE(2) & 4) !== 0 && copy.readUInt8(0) === FrameType.DATA && CRC_FREE_KINDS.has(copy.readUInt8(1) as ChannelKind);
        copy.writeUInt16LE(headerOnly ? 5 : 1, 2);
        const ofHeader = crc32(copy.subarray(0, 20));
        copy.writeUInt32LE(headerOnly ? ofHeader : crc32(copy.subarray(FRAME_HEADER_SIZE), ofHeader), 20);
        return copy;
      }),
    );
  },
  async run(input) {
    const session = new LinkSession('listener', SESSION_ID, true, {}, CRC_FREE_KINDS);
    let handlers: Parameters<FrameTransport['deliverTo']>[0] | undefined;
    const transport: FrameTransport = {
      send: (_bytes, done) => setImmediate(done),
      deliverTo: (to) => (handlers = to),
      close: () => {},
    };
    let aborted: LinkAbortedError | undefined;
    let delivered = 0;
    session.on('aborted', (error) => (aborted = error));
    session.on('channel', (channel) => {
      channel.readable.on('data', (chunk: Buffer) => (delivered += chunk.length));
    });
    session.attach(transport);
    for (const bytes of framesOf(input)) handlers!.frame(bytes);
    for (let turn = 0; turn < 3; turn++) await new Promise((resolve) => setImmediate(resolve));
    if (delivered > input.length) throw new InvariantBroken(`channels delivered ${delivered} bytes from ${input.length} bytes of frames`);
    if (aborted) throw aborted;
    session.close();
    return delivered;
  },
};
