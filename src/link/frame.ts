import { crc32 } from 'node:zlib';
import { LinkProtocolError } from './link-errors.js';

/**
 * The haul link's frame: a fixed header and a payload.
 *
 *   0  u8  type          4  u32 channel       16 u32 payload length
 *   1  u8  channel kind  8  u64 offset        20 u32 crc32 of bytes 0..19 and the payload (the
 *                                                   payload left out with bit 2; 0 on TLS links)
 *   2  u16 flags: bit 0 = the CRC is present, bit 1 = the payload is the next message,
 *                 bit 2 = the CRC covers bytes 0..19 only (the header's own fields)
 *
 * A frame is one WebSocket message, header and payload; or, for a payload of SEPARATE_PAYLOAD_MIN
 * bytes or more, two: the header alone with bit 1 set, then the payload alone. WebSocket messages
 * arrive whole and in order, so frames can never run into each other, and a payload message can only
 * be the one right after its header; the length still makes a mis-sliced frame an error instead of
 * data. Sending a large payload as a message of its own spares the sender a copy of every page
 * behind the header (and the fresh memory that copy needs). The CRC guards frames on plain links;
 * over TLS every record is already authenticated, and computing it would cost nearly as much as
 * hashing the stream, so TLS links leave it out. On the DATA frames of the kinds the application
 * acts on only once the channel's end digest matched (crcFreeKinds), a plain link's CRC covers the
 * header alone: a damaged payload byte there fails that digest before the bytes are used, so the CRC
 * of every page would only cost a pass over it on each end, while a damaged header field (a channel,
 * an offset, a length) is still found at once instead of misrouting or stalling a channel.
 */
export const FRAME_HEADER_SIZE = 24;
export const MAX_FRAME_PAYLOAD = 1024 * 1024;

export const FrameType = {
  /** Handshake, first frame each way on every connection (payload: Hello / HelloReply). */
  HELLO: 1,
  HELLO_REPLY: 2,
  /** A channel begins (payload: its name, utf8); its sender may send INITIAL_CHANNEL_WINDOW bytes (session.ts) before any CREDIT. */
  OPEN: 0x10,
  /** Channel bytes starting at `offset`. */
  DATA: 0x11,
  /** The channel's bytes end at `offset`; payload: their digest (stream-digest.ts). */
  END: 0x12,
  /**
   * The receiver has `offset` bytes and takes more up to the u64 limit in the payload, at most
   * CHANNEL_WINDOW beyond `offset`; a limit never goes back. DATA past it aborts the session.
   */
  CREDIT: 0x13,
  /** The channel failed on its sender's side (payload: reason, utf8). */
  RESET: 0x14,
  /** The whole session ends with an error (payload: Abort). */
  ABORT: 0x20,
  /** The whole session ends because its work is done; no resumption follows. */
  CLOSE: 0x21,
} as const;
export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];
const TYPES = new Set<number>(Object.values(FrameType));

/**
 * What a channel carries, as its application tags it (1-255, in its OPEN frame and on its data); the link
 * carries it and reads it only to know what a plain link's DATA frame's CRC covers (crcFreeKinds).
 * 0 marks the frames of the session itself.
 */
export type ChannelKindCode = number;

export interface Frame {
  readonly type: FrameTypeCode;
  readonly kind: ChannelKindCode;
  readonly channel: number;
  readonly offset: bigint;
  readonly payload: Buffer;
}

export { LinkProtocolError };

const CRC_PRESENT = 1;
const PAYLOAD_FOLLOWS = 2;
const CRC_HEADER_ONLY = 4;

/** Payloads from this size on go as a message of their own (below it, copying costs less than a message). */
export const SEPARATE_PAYLOAD_MIN = 16 * 1024;

/** No channel kind is exempt from a plain link's CRC unless the application says so. */
export const NO_CRC_FREE_KINDS: ReadonlySet<ChannelKindCode> = new Set();

/** What a frame's CRC covers: header and payload, the header alone, or nothing (a TLS link). */
export type FrameCrc = 'whole' | 'header' | 'none';

/** What `frame`'s CRC covers on a link whose frames have one (`linkCrc`) or not. */
export function frameCrcOf(frame: Pick<Frame, 'type' | 'kind'>, linkCrc: boolean, crcFreeKinds: ReadonlySet<ChannelKindCode>): FrameCrc {
  if (!linkCrc) return 'none';
  return frame.type === FrameType.DATA && crcFreeKinds.has(frame.kind) ? 'header' : 'whole';
}

const crcOption = (crc: boolean | FrameCrc): FrameCrc => (crc === true ? 'whole' : crc === false ? 'none' : crc);
const CRC_FLAGS: Readonly<Record<FrameCrc, number>> = { whole: CRC_PRESENT, header: CRC_PRESENT | CRC_HEADER_ONLY, none: 0 };

/** A frame as one message, header and payload together. */
export function encodeFrame(frame: Frame, crc: boolean | FrameCrc = true): Buffer {
  const covers = crcOption(crc);
  const bytes = Buffer.allocUnsafe(FRAME_HEADER_SIZE + frame.payload.length);
  writeHeader(bytes, frame, CRC_FLAGS[covers]);
  frame.payload.copy(bytes, FRAME_HEADER_SIZE);
  writeCrc(bytes, frame.payload, covers);
  return bytes;
}

/** A frame as the messages it goes in: one, or the header and then the payload (SEPARATE_PAYLOAD_MIN). */
export function encodeFrameMessages(frame: Frame, crc: boolean | FrameCrc = true): Buffer[] {
  if (frame.payload.length < SEPARATE_PAYLOAD_MIN) return [encodeFrame(frame, crc)];
  const covers = crcOption(crc);
  const header = Buffer.allocUnsafe(FRAME_HEADER_SIZE);
  writeHeader(header, frame, PAYLOAD_FOLLOWS | CRC_FLAGS[covers]);
  writeCrc(header, frame.payload, covers);
  return [header, frame.payload];
}

function writeHeader(bytes: Buffer, frame: Frame, flags: number): void {
  if (frame.payload.length > MAX_FRAME_PAYLOAD) throw new LinkProtocolError(`frame payload of ${frame.payload.length} bytes`);
  bytes.writeUInt8(frame.type, 0);
  bytes.writeUInt8(frame.kind, 1);
  bytes.writeUInt16LE(flags, 2);
  bytes.writeUInt32LE(frame.channel, 4);
  bytes.writeBigUInt64LE(frame.offset, 8);
  bytes.writeUInt32LE(frame.payload.length, 16);
  bytes.writeUInt32LE(0, 20);
}

/** Into a header whose flags are written: the CRC `covers` asks for. */
function writeCrc(header: Buffer, payload: Buffer, covers: FrameCrc): void {
  if (covers !== 'none') header.writeUInt32LE(frameCrc(header, covers === 'whole' ? payload : undefined), 20);
}

/** The CRC of bytes 0..19 of the header, and of the payload unless it covers the header alone. */
function frameCrc(header: Buffer, payload: Buffer | undefined): number {
  const ofHeader = crc32(header.subarray(0, 20));
  return payload ? crc32(payload, ofHeader) : ofHeader;
}

/**
 * Reads frames from a connection's messages in order: each message completes a frame, or is the
 * header of one whose payload is the next message. Whatever is wrong with a message is a
 * LinkProtocolError; the connection's frames cannot be trusted after one.
 */
export class FrameReader {
  private header: Buffer | undefined;

  /**
   * `requireCrc`: a plain link's reader refuses frames without a CRC, and frames whose CRC covers the
   * header alone (bit 2) unless they are DATA frames of `crcFreeKinds`.
   */
  constructor(
    private readonly requireCrc = true,
    private readonly crcFreeKinds = NO_CRC_FREE_KINDS,
  ) {}

  /** The frame this message completes, or undefined when it is a header whose payload comes next. */
  read(message: Buffer): Frame | undefined {
    const header = this.header;
    if (header) {
      this.header = undefined;
      const length = header.readUInt32LE(16);
      if (message.length !== length) throw new LinkProtocolError(`${message.length < length ? 'truncated' : 'overlong'} frame: a ${message.length}-byte payload message for a ${length}-byte payload`);
      return checkedFrame(header, message, this.requireCrc, this.crcFreeKinds);
    }
    if (message.length >= FRAME_HEADER_SIZE && message.readUInt16LE(2) & PAYLOAD_FOLLOWS) {
      if (message.length !== FRAME_HEADER_SIZE) throw new LinkProtocolError(`a ${message.length}-byte frame header whose payload is to follow, the header alone is ${FRAME_HEADER_SIZE}`);
      const length = message.readUInt32LE(16);
      if (length === 0 || length > MAX_FRAME_PAYLOAD) throw new LinkProtocolError(`a frame header whose payload is to follow with a ${length}-byte payload`);
      // below it a payload travels behind its header in one message (encodeFrameMessages)
      if (length < SEPARATE_PAYLOAD_MIN) throw new LinkProtocolError(`a frame header whose ${length}-byte payload is to follow alone; under ${SEPARATE_PAYLOAD_MIN} bytes it comes with its header`);
      this.header = message;
      return undefined;
    }
    return decodeFrame(message, this.requireCrc, this.crcFreeKinds);
  }
}

/**
 * Decodes one whole frame (one WebSocket message), or says exactly what is wrong with it. A link
 * that requires CRCs (a plain one) refuses a frame without, and a CRC of the header alone but on a
 * DATA frame of `crcFreeKinds`.
 */
export function decodeFrame(bytes: Buffer, requireCrc = true, crcFreeKinds = NO_CRC_FREE_KINDS): Frame {
  if (bytes.length < FRAME_HEADER_SIZE) throw new LinkProtocolError(`truncated frame: ${bytes.length} bytes, the header alone is ${FRAME_HEADER_SIZE}`);
  const length = bytes.readUInt32LE(16);
  if (length > MAX_FRAME_PAYLOAD) throw new LinkProtocolError(`oversize frame: ${length} bytes of payload, at most ${MAX_FRAME_PAYLOAD}`);
  if (bytes.length !== FRAME_HEADER_SIZE + length) {
    throw new LinkProtocolError(`${bytes.length < FRAME_HEADER_SIZE + length ? 'truncated' : 'overlong'} frame: ${bytes.length} bytes for a ${length}-byte payload`);
  }
  if (bytes.readUInt16LE(2) & PAYLOAD_FOLLOWS) throw new LinkProtocolError('a frame header whose payload is to follow, read as a whole frame');
  return checkedFrame(bytes, bytes.subarray(FRAME_HEADER_SIZE), requireCrc, crcFreeKinds);
}

function checkedFrame(header: Buffer, payload: Buffer, requireCrc: boolean, crcFreeKinds: ReadonlySet<ChannelKindCode>): Frame {
  const flags = header.readUInt16LE(2);
  const type = header.readUInt8(0);
  const kind = header.readUInt8(1);
  if (flags & ~(CRC_PRESENT | PAYLOAD_FOLLOWS | CRC_HEADER_ONLY)) throw new LinkProtocolError('reserved frame bits set');
  const headerOnly = (flags & CRC_HEADER_ONLY) !== 0;
  if (headerOnly && !(flags & CRC_PRESENT)) throw new LinkProtocolError('a frame whose CRC covers its header only, without a CRC');
  if (flags & CRC_PRESENT) {
    if (header.readUInt32LE(20) !== frameCrc(header, headerOnly ? undefined : payload)) throw new LinkProtocolError('corrupted frame: CRC mismatch');
  } else if (requireCrc) {
    throw new LinkProtocolError('frame without a CRC on a link that needs one (a plain link)');
  }
  // the payload may go unchecked only where the application checks it by the channel's digest
  if (headerOnly && requireCrc && !(type === FrameType.DATA && crcFreeKinds.has(kind))) {
    throw new LinkProtocolError(`a frame of type 0x${type.toString(16)} and kind ${kind} whose CRC leaves its payload out, on a link that needs it covered`);
  }
  if (!TYPES.has(type)) throw new LinkProtocolError(`unknown frame type 0x${type.toString(16)}`);
  return { type: type as FrameTypeCode, kind, channel: header.readUInt32LE(4), offset: header.readBigUInt64LE(8), payload };
}
