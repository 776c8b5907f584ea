import { crc32 } from 'node:zlib';
import { LinkProtocolError } from './link-errors.js';

/**
 * The haul link's frame: every message on the connection is one frame, a fixed header and a payload.
 *
 *   0  u8  type          4  u32 channel       16 u32 payload length
 *   1  u8  channel kind  8  u64 offset        20 u32 crc32 of bytes 0..19 and the payload (or 0)
 *   2  u16 flags: bit 0 = the CRC is present
 *
 * Each frame is one WebSocket message, so frames can never run into each other; the length still
 * makes a mis-sliced frame an error instead of data. The CRC guards frames on plain links; over TLS
 * every record is already authenticated, and computing it would cost nearly as much as hashing the
 * stream, so TLS links leave it out.
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
 * What a channel carries, as its application tags it (1-255, said once in its OPEN frame); the link
 * carries it and does not read it. 0 marks the frames of the session itself.
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

export function encodeFrame(frame: Frame, withCrc = true): Buffer {
  if (frame.payload.length > MAX_FRAME_PAYLOAD) throw new LinkProtocolError(`frame payload of ${frame.payload.length} bytes`);
  const bytes = Buffer.allocUnsafe(FRAME_HEADER_SIZE + frame.payload.length);
  bytes.writeUInt8(frame.type, 0);
  bytes.writeUInt8(frame.kind, 1);
  bytes.writeUInt16LE(withCrc ? CRC_PRESENT : 0, 2);
  bytes.writeUInt32LE(frame.channel, 4);
  bytes.writeBigUInt64LE(frame.offset, 8);
  bytes.writeUInt32LE(frame.payload.length, 16);
  frame.payload.copy(bytes, FRAME_HEADER_SIZE);
  bytes.writeUInt32LE(withCrc ? crc32(frame.payload, crc32(bytes.subarray(0, 20))) : 0, 20);
  return bytes;
}

/**
 * Decodes one whole frame (one WebSocket message), or says exactly what is wrong with it. A link
 * that requires CRCs (a plain one) refuses a frame without.
 */
export function decodeFrame(bytes: Buffer, requireCrc = true): Frame {
  if (bytes.length < FRAME_HEADER_SIZE) throw new LinkProtocolError(`truncated frame: ${bytes.length} bytes, the header alone is ${FRAME_HEADER_SIZE}`);
  const length = bytes.readUInt32LE(16);
  if (length > MAX_FRAME_PAYLOAD) throw new LinkProtocolError(`oversize frame: ${length} bytes of payload, at most ${MAX_FRAME_PAYLOAD}`);
  if (bytes.length !== FRAME_HEADER_SIZE + length) {
    throw new LinkProtocolError(`${bytes.length < FRAME_HEADER_SIZE + length ? 'truncated' : 'overlong'} frame: ${bytes.length} bytes for a ${length}-byte payload`);
  }
  const payload = bytes.subarray(FRAME_HEADER_SIZE);
  const flags = bytes.readUInt16LE(2);
  if (flags & ~CRC_PRESENT) throw new LinkProtocolError('reserved frame bits set');
  if (flags & CRC_PRESENT) {
    if (bytes.readUInt32LE(20) !== crc32(payload, crc32(bytes.subarray(0, 20)))) throw new LinkProtocolError('corrupted frame: CRC mismatch');
  } else if (requireCrc) {
    throw new LinkProtocolError('frame without a CRC on a link that needs one (a plain link)');
  }
  const type = bytes.readUInt8(0);
  const kind = bytes.readUInt8(1);
  if (!TYPES.has(type)) throw new LinkProtocolError(`unknown frame type 0x${type.toString(16)}`);
  return { type: type as FrameTypeCode, kind, channel: bytes.readUInt32LE(4), offset: bytes.readBigUInt64LE(8), payload };
}
