import { crc32 } from 'node:zlib';
import { Readable, Writable } from 'node:stream';
import { FRAME_HEADER_SIZE, FrameReader, FrameType, LinkProtocolError, MAX_FRAME_PAYLOAD, SEPARATE_PAYLOAD_MIN, decodeFrame, encodeFrame, encodeFrameMessages } from '../../../src/link/frame.js';
import { PROTOCOL_VERSION, helloFrame, helloReplyFrame, parseHello, parseHelloReply } from '../../../src/link/handshake.js';
import { Messages } from '../../../src/link/messages.js';
import { TruncatedStreamError } from '../../../src/streams/stream-reader.js';
import { InvariantBroken, type FuzzTarget } from '../fuzzer.js';
import { chunked, type Random } from '../mutations.js';
import { CRC_FREE_KINDS, receiveControl, sendControl, ChannelKind, type Control } from '../../../proxy/wire/index.js';
import { MigrationMessageError, decodeControl, decodeHostHello, encodeControl, encodeHostHello, type HostHello } from '../../../proxy/wire/messages.js';
import { MIGRATION_PROTOCOL } from '../../../proxy/host-hello.js';

const HOST: HostHello = { criu_version: '4.1.1', page_size: 4096, architecture: 'x64', capabilities: ['lazy', 'pre-copy'], haul_version: '0.1.0', role: 'source', migration_protocol: MIGRATION_PROTOCOL, incus_version: '6.0.4' };
/** What the link's handshake carries for the application: opaque to it. */
const APPLICATION = encodeHostHello(HOST);
const SESSION_ID = Buffer.from('00112233445566778899aabbccddeeff', 'hex');

const CONTROLS: Control[] = [
  { migration_start: { mode: 'lazy', pid: 4242, criu_version: '4.1.1', instance: 'c1', migration_id: 'm-1', source_host: 'a', restore_timeout_ms: 30000, manager_addresses: ['10.0.0.1:8443'] } },
  { images_complete: { files: 12, page_streams: 3, bytes: 0x1_0000_0000n, filesystem_tars: 1 } },
  { restore_result: { ok: false, error: 'criu restore failed', pid: 0 } },
  { progress: { pages: 1024n, bytes: 4194304n } },
  { lazy_complete: { pages: 0xffff_ffff_ffffn } },
  { commit: { source_pid: 4242 } },
  { images_stored: { ok: true, error: '' } },
  { migration_accepted: { ok: true, error: '' } },
];

/**
 * Makes the frame header agree with the bytes around it, as a peer that computes its frames but
 * lies in them would: the payload length field, then the CRC when the frame says it has one.
 */
function repairFrame(input: Buffer, random: Random): Buffer {
  if (input.length < FRAME_HEADER_SIZE) return input;
  const copy = Buffer.from(input);
  if (random.chance(0.8)) copy.writeUInt32LE(copy.length - FRAME_HEADER_SIZE, 16);
  if (copy.readUInt16LE(2) & 1) copy.writeUInt32LE(crcOf(copy, copy.subarray(FRAME_HEADER_SIZE)), 20);
  return copy;
}

/** The CRC a header's flags ask for: of bytes 0..19 and the payload, or of the header alone (bit 2). */
function crcOf(header: Buffer, payload: Buffer): number {
  const ofHeader = crc32(header.subarray(0, 20));
  return header.readUInt16LE(2) & 4 ? ofHeader : crc32(payload, ofHeader);
}

function frameSeeds(): Buffer[] {
  const frames: Buffer[] = [];
  const payloads = [Buffer.alloc(0), Buffer.from('pagemap-1234'), Buffer.alloc(8, 0xff), Buffer.alloc(32, 0x5a), Buffer.alloc(300, 1)];
  for (const type of Object.values(FrameType)) {
    for (const crc of ['whole', 'header', 'none'] as const) {
      const kind = type === FrameType.OPEN ? ChannelKind.PAGES : type === FrameType.DATA ? ChannelKind.IMAGE_FILE : 0;
      frames.push(encodeFrame({ type, kind, channel: type * 2 + 1, offset: BigInt(type) << 20n, payload: payloads[type % payloads.length]! }, crc));
    }
  }
  return frames;
}

/** Checks what a decoder gave against the type it promises: a wrong shape is a crash waiting downstream. */
function expectShape(value: unknown, shape: Record<string, 'string' | 'number' | 'boolean' | 'bigint' | 'buffer' | 'array' | 'object'>, what: string): void {
  if (typeof value !== 'object' || value === null) throw new InvariantBroken(`${what} decoded to ${value === null ? 'null' : typeof value}`);
  for (const [field, kind] of Object.entries(shape)) {
    const got = (value as Record<string, unknown>)[field];
    const ok = kind === 'buffer' ? Buffer.isBuffer(got) : kind === 'array' ? Array.isArray(got) : kind === 'object' ? typeof got === 'object' && got !== null : typeof got === kind;
    if (!ok) throw new InvariantBroken(`${what}.${field} decoded to ${got === null ? 'null' : typeof got}, not ${kind}`);
  }
}

const HOST_SHAPE = { criu_version: 'string', page_size: 'number', architecture: 'string', capabilities: 'array', haul_version: 'string', role: 'string', migration_protocol: 'number', incus_version: 'string' } as const;

export const linkFrame: FuzzTarget = {
  name: 'link-frame',
  decoder: 'src/link/frame.ts decodeFrame (one WebSocket message)',
  expected: [LinkProtocolError],
  seeds: frameSeeds,
  repair: repairFrame,
  run(input, random) {
    const frame = decodeFrame(input, random.chance(0.5), random.chance(0.5) ? CRC_FREE_KINDS : undefined);
    if (frame.payload.length > MAX_FRAME_PAYLOAD || frame.payload.length !== input.length - FRAME_HEADER_SIZE) {
      throw new InvariantBroken(`a ${frame.payload.length}-byte payload from a ${input.length}-byte frame`);
    }
    return frame;
  },
};

/**
 * A connection's messages as one input: each a u32 length, then its bytes. A length past the end
 * takes what is left, so every input is some sequence of messages.
 */
function splitMessages(input: Buffer): Buffer[] {
  const messages: Buffer[] = [];
  for (let at = 0; at + 4 <= input.length;) {
    const length = Math.min(input.readUInt32LE(at), input.length - at - 4);
    messages.push(input.subarray(at + 4, at + 4 + length));
    at += 4 + length;
  }
  return messages;
}

function joinMessages(messages: readonly Buffer[]): Buffer {
  return Buffer.concat(messages.flatMap((message) => {
    const length = Buffer.alloc(4);
    length.writeUInt32LE(message.length);
    return [length, message];
  }));
}

const PAYLOAD_FOLLOWS = 2;

export const linkFrameMessages: FuzzTarget = {
  name: 'link-frame-messages',
  decoder: "src/link/frame.ts FrameReader (a connection's messages in order, large payloads in a message of their own)",
  expected: [LinkProtocolError],
  seeds: () => {
    const frame = (payload: number, offset: bigint, crc: 'whole' | 'header' | 'none' = 'whole'): Buffer[] =>
      encodeFrameMessages({ type: FrameType.DATA, kind: ChannelKind.PAGES, channel: 3, offset, payload: Buffer.alloc(payload, Number(offset & 0xffn)) }, crc);
    return [
      joinMessages([...frame(SEPARATE_PAYLOAD_MIN, 0n)]),
      joinMessages([...frame(100, 0n), ...frame(SEPARATE_PAYLOAD_MIN + 4096, 100n), ...frame(SEPARATE_PAYLOAD_MIN - 1, 20580n)]),
      joinMessages([...frame(SEPARATE_PAYLOAD_MIN, 0n), ...frame(SEPARATE_PAYLOAD_MIN, 16384n)]),
      // a TLS link's frames carry no CRC
      joinMessages([...frame(SEPARATE_PAYLOAD_MIN, 0n, 'none'), ...frame(300, 16384n, 'none')]),
      // a page stream's data on a plain link: a CRC of the header alone
      joinMessages([...frame(SEPARATE_PAYLOAD_MIN, 0n, 'header'), ...frame(300, 16384n, 'header')]),
    ];
  },
  // each message made to agree with itself (a whole frame), or a header with the message after it:
  // lengths and CRCs, so that mutations reach the checks behind them
  repair(input, random) {
    const messages: Buffer[] = splitMessages(input).map((message) => Buffer.from(message));
    for (let i = 0; i < messages.length; i++) {
      const header = messages[i]!;
      if (header.length < FRAME_HEADER_SIZE) continue;
      if (!(header.readUInt16LE(2) & PAYLOAD_FOLLOWS)) {
        messages[i] = repairFrame(header, random);
        continue;
      }
      if (i + 1 >= messages.length || header.length !== FRAME_HEADER_SIZE || !random.chance(0.8)) continue;
      header.writeUInt32LE(messages[i + 1]!.length, 16);
      if (header.readUInt16LE(2) & 1) header.writeUInt32LE(crcOf(header, messages[i + 1]!), 20);
      i++;
    }
    return joinMessages(messages);
  },
  run(input, random) {
    const requireCrc = random.chance(0.5);
    const crcFree = random.chance(0.5) ? CRC_FREE_KINDS : undefined;
    const reader = new FrameReader(requireCrc, crcFree);
    const frames = [];
    let header: Buffer | undefined;
    for (const message of splitMessages(input)) {
      const frame = reader.read(message);
      const wasHeader = header;
      header = undefined;
      if (!frame) {
        if (wasHeader || message.length !== FRAME_HEADER_SIZE) throw new InvariantBroken(`a ${message.length}-byte message${wasHeader ? ' after a header' : ''} completed no frame`);
        header = message;
        continue;
      }
      const head = wasHeader ?? message.subarray(0, FRAME_HEADER_SIZE);
      const payload = wasHeader ? message : message.subarray(FRAME_HEADER_SIZE);
      if (frame.payload.length > MAX_FRAME_PAYLOAD || !frame.payload.equals(payload)) throw new InvariantBroken(`a ${frame.payload.length}-byte payload from a ${message.length}-byte message, not its bytes`);
      if (frame.payload.length !== head.readUInt32LE(16)) throw new InvariantBroken('a payload of another length than its header says');
      if (frame.type !== head[0] || frame.kind !== head[1] || frame.channel !== head.readUInt32LE(4) || frame.offset !== head.readBigUInt64LE(8)) throw new InvariantBroken("a frame whose fields are not its header's");
      const flags = head.readUInt16LE(2);
      // a plain link: a good CRC of the whole frame, or of its header alone on data of a kind whose digest checks it
      const headerOnly = (flags & 4) !== 0;
      if (requireCrc && headerOnly && !(frame.type === FrameType.DATA && crcFree?.has(frame.kind as ChannelKind))) throw new InvariantBroken('a plain link took a frame whose payload its CRC left out');
      if (requireCrc && (!(flags & 1) || head.readUInt32LE(20) !== crcOf(head, payload))) throw new InvariantBroken('a plain link took a frame without a good CRC');
      frames.push(frame);
    }
    return frames;
  },
};

export const linkHandshake: FuzzTarget = {
  name: 'link-handshake',
  decoder: 'src/link/handshake.ts parseHello / parseHelloReply (the first frame each way)',
  expected: [LinkProtocolError],
  seeds: () => [
    helloFrame({ protocol_version: PROTOCOL_VERSION, session_id: SESSION_ID, resume: false, application: APPLICATION, received: [] }),
    helloFrame({ protocol_version: PROTOCOL_VERSION, session_id: SESSION_ID, resume: true, application: APPLICATION, received: [{ channel: 3, received: 0x1_0000_0001n, ended: false }, { channel: 5, received: 7n, ended: true }] }),
    helloReplyFrame({ protocol_version: PROTOCOL_VERSION, resumed: true, application: encodeHostHello({ ...HOST, role: 'destination' }), received: [{ channel: 2, received: 99n, ended: false }], refusal: '' }),
    helloReplyFrame({ protocol_version: PROTOCOL_VERSION, resumed: false, application: Buffer.alloc(0), received: [], refusal: 'no such session here to resume' }),
  ],
  repair: repairFrame,
  run(input) {
    // the first byte says which side's frame it is; each parser must refuse the other's
    const hello = input[0] === FrameType.HELLO ? parseHello(input) : parseHelloReply(input);
    expectShape(hello, { protocol_version: 'number', application: 'buffer', received: 'array' }, 'the handshake');
    for (const progress of hello.received) expectShape(progress, { channel: 'number', received: 'bigint', ended: 'boolean' }, 'channel progress');
    return hello;
  },
};

export const linkMessages: FuzzTarget = {
  name: 'link-messages',
  decoder: 'src/link/messages.ts Messages.*.decode, proxy/wire/messages.ts decodeControl and decodeHostHello (protobuf payloads; the first byte picks the message)',
  expected: [LinkProtocolError, MigrationMessageError],
  seeds: () => [
    ...CONTROLS.map((control) => Buffer.concat([Buffer.from([0]), encodeControl(control)])),
    Buffer.concat([Buffer.from([1]), Messages.abort.encode({ reason: 'the restore failed: criu exited 1', origin: 'listener', code: 'HAUL_LINK_PROTOCOL' })]),
    Buffer.concat([Buffer.from([2]), Messages.hello.encode({ protocol_version: 1, session_id: SESSION_ID, resume: true, application: APPLICATION, received: [{ channel: 3, received: 5n, ended: true }] })]),
    Buffer.concat([Buffer.from([3]), Messages.helloReply.encode({ protocol_version: 1, resumed: false, application: APPLICATION, received: [], refusal: 'no' })]),
    Buffer.concat([Buffer.from([4]), APPLICATION]),
  ],
  run(input) {
    const body = input.subarray(1);
    switch ((input[0] ?? 0) % 5) {
      case 0: {
        const control = decodeControl(body);
        // a oneof: at most one body, whatever the wire repeats
        const set = Object.values(control).filter((value) => value !== undefined && value !== null);
        if (set.length > 1) throw new InvariantBroken(`a control message with ${set.length} bodies`);
        return control;
      }
      case 1: {
        const abort = Messages.abort.decode(body);
        expectShape(abort, { reason: 'string', origin: 'string' }, 'Abort');
        return abort;
      }
      case 2:
        return Messages.hello.decode(body);
      case 3:
        return Messages.helloReply.decode(body);
      default: {
        const host = decodeHostHello(body);
        expectShape(host, HOST_SHAPE, 'the host hello');
        return host;
      }
    }
  },
};

/** The bytes sendControl writes for these messages, in order. */
async function controlStream(messages: readonly Control[]): Promise<Buffer> {
  const parts: Buffer[] = [];
  const sink = new Writable({ write: (chunk: Buffer, _encoding, done) => (parts.push(chunk), done()) });
  for (const message of messages) await sendControl(sink, message);
  return Buffer.concat(parts);
}

let controlSeeds: Buffer[] = [];

export const controlChannel: FuzzTarget = {
  name: 'control-channel',
  decoder: 'proxy/wire/control-channel.ts receiveControl (length-prefixed control messages on a channel)',
  expected: [MigrationMessageError, TruncatedStreamError],
  async open() {
    controlSeeds = [await controlStream(CONTROLS), await controlStream(CONTROLS.slice(0, 2)), await controlStream([CONTROLS[4]!])];
  },
  seeds: () => controlSeeds,
  async run(input, random) {
    const messages: Control[] = [];
    for await (const message of receiveControl(Readable.from(chunked(input, random)))) messages.push(message);
    if (messages.length * 4 > input.length) throw new InvariantBroken(`${messages.length} messages from ${input.length} bytes`);
    return messages;
  },
};
