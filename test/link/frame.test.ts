import { describe, expect, it } from 'vitest';
import { FRAME_HEADER_SIZE, FrameType, LinkProtocolError, MAX_FRAME_PAYLOAD, decodeFrame, encodeFrame, type Frame } from '../../src/link/frame.js';
import { ChannelKind } from '../../proxy/wire/index.js';

const frame: Frame = { type: FrameType.DATA, kind: ChannelKind.PAGES, channel: 7, offset: 123456789012n, payload: Buffer.from('pages') };

describe('link frames', () => {
  it('decode to what was encoded, with or without a CRC', () => {
    expect(decodeFrame(encodeFrame(frame))).toEqual(frame);
    expect(decodeFrame(encodeFrame(frame, false), false)).toEqual(frame);
    expect(encodeFrame(frame).length).toBe(FRAME_HEADER_SIZE + 5);
  });

  it('refuse a frame without a CRC where the link needs one, and unknown flags and types', () => {
    expect(() => decodeFrame(encodeFrame(frame, false))).toThrow(/without a CRC on a link that needs one/);
    const flagged = encodeFrame(frame, false);
    flagged.writeUInt16LE(0x8000, 2);
    expect(() => decodeFrame(flagged, false)).toThrow(/reserved frame bits/);
    const unknownType = encodeFrame(frame, false);
    unknownType.writeUInt8(0x7f, 0);
    expect(() => decodeFrame(unknownType, false)).toThrow(/unknown frame type 0x7f/);
  });

  it("carry a channel's kind as the application tagged it, without reading it", () => {
    const tagged = encodeFrame(frame, false);
    tagged.writeUInt8(42, 1);
    expect(decodeFrame(tagged, false).kind).toBe(42);
  });

  it('say what is wrong with a damaged frame', () => {
    const bytes = encodeFrame(frame);
    expect(() => decodeFrame(bytes.subarray(0, 10))).toThrow(/truncated frame: 10 bytes/);
    expect(() => decodeFrame(bytes.subarray(0, bytes.length - 1))).toThrow(/truncated frame/);
    expect(() => decodeFrame(Buffer.concat([bytes, Buffer.from([0])]))).toThrow(/overlong frame/);
    const flipped = Buffer.from(bytes);
    flipped.writeUInt8(flipped.readUInt8(FRAME_HEADER_SIZE) ^ 1, FRAME_HEADER_SIZE);
    expect(() => decodeFrame(flipped)).toThrow(LinkProtocolError);
    expect(() => decodeFrame(flipped)).toThrow(/corrupted frame: CRC mismatch/);
    expect(() => encodeFrame({ ...frame, payload: Buffer.alloc(MAX_FRAME_PAYLOAD + 1) })).toThrow(/frame payload/);
  });
});
