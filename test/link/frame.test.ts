import { describe, expect, it } from 'vitest';
import { FRAME_HEADER_SIZE, FrameReader, FrameType, LinkProtocolError, MAX_FRAME_PAYLOAD, SEPARATE_PAYLOAD_MIN, decodeFrame, encodeFrame, encodeFrameMessages, frameCrcOf, type Frame } from '../../src/link/frame.js';
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

  it('check only the header of the data of kinds the application checks by their end digest, on a plain link, and nothing else', () => {
    const crcFree = new Set<number>([ChannelKind.PAGES]);
    expect(frameCrcOf(frame, true, crcFree)).toBe('header');
    expect(decodeFrame(encodeFrame(frame, 'header'), true, crcFree)).toEqual(frame);
    // the payload is not covered (its digest is), a damaged header is still found at once
    const payloadFlipped = encodeFrame(frame, 'header');
    payloadFlipped.writeUInt8(payloadFlipped.readUInt8(FRAME_HEADER_SIZE) ^ 1, FRAME_HEADER_SIZE);
    expect(decodeFrame(payloadFlipped, true, crcFree).payload[0]).toBe('pages'.charCodeAt(0) ^ 1);
    const channelFlipped = encodeFrame(frame, 'header');
    channelFlipped.writeUInt8(channelFlipped.readUInt8(4) ^ 1, 4);
    expect(() => decodeFrame(channelFlipped, true, crcFree)).toThrow(/CRC mismatch/);
    const [header, payload] = encodeFrameMessages({ ...frame, payload: Buffer.alloc(SEPARATE_PAYLOAD_MIN) }, 'header');
    header!.writeUInt8(header!.readUInt8(8) ^ 1, 8); // the offset
    const reader = new FrameReader(true, crcFree);
    expect(reader.read(header!)).toBeUndefined();
    expect(() => reader.read(payload!)).toThrow(/CRC mismatch/);
    // a lazy push reaches CRIU as it comes: its frames keep a whole CRC, and one without is refused
    const push: Frame = { ...frame, kind: ChannelKind.LAZY_PUSH };
    expect(frameCrcOf(push, true, crcFree)).toBe('whole');
    expect(() => decodeFrame(encodeFrame(push, 'header'), true, crcFree)).toThrow(/whose CRC leaves its payload out/);
    expect(() => decodeFrame(encodeFrame(push, false), true, crcFree)).toThrow(/without a CRC on a link that needs one/);
    // only DATA: a page stream's OPEN and END keep theirs whole
    const end: Frame = { ...frame, type: FrameType.END, payload: Buffer.alloc(32) };
    expect(frameCrcOf(end, true, crcFree)).toBe('whole');
    expect(() => decodeFrame(encodeFrame(end, 'header'), true, crcFree)).toThrow(/whose CRC leaves its payload out/);
    // a TLS link has none anywhere
    expect(frameCrcOf(push, false, crcFree)).toBe('none');
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

  describe('with a large payload', () => {
    const large: Frame = { ...frame, payload: Buffer.alloc(SEPARATE_PAYLOAD_MIN, 7) };

    it('go as the header and then the payload itself, which is not copied, and read back as one frame', () => {
      const messages = encodeFrameMessages(large);
      expect(messages).toHaveLength(2);
      expect(messages[0]!.length).toBe(FRAME_HEADER_SIZE);
      expect(messages[1]).toBe(large.payload);
      const reader = new FrameReader();
      expect(reader.read(messages[0]!)).toBeUndefined();
      expect(reader.read(messages[1]!)).toEqual(large);
      // and the reader goes on with the next frame, in one message
      expect(reader.read(encodeFrame(frame))).toEqual(frame);
      expect(encodeFrameMessages(frame)).toEqual([encodeFrame(frame)]);
    });

    it('refuse a payload message of another length, a damaged one, and a header read as a whole frame', () => {
      const [header, payload] = encodeFrameMessages(large) as [Buffer, Buffer];
      expect(() => {
        const reader = new FrameReader();
        reader.read(header);
        reader.read(payload.subarray(1));
      }).toThrow(/truncated frame: a 16383-byte payload message for a 16384-byte payload/);
      expect(() => {
        const reader = new FrameReader();
        reader.read(header);
        reader.read(Buffer.concat([payload, Buffer.from([0])]));
      }).toThrow(/overlong frame/);
      expect(() => {
        const reader = new FrameReader();
        reader.read(header);
        const flipped = Buffer.from(payload);
        flipped[100]! ^= 1;
        reader.read(flipped);
      }).toThrow(/corrupted frame: CRC mismatch/);
      expect(() => decodeFrame(header)).toThrow(/truncated frame/);
      expect(() => new FrameReader().read(Buffer.concat([header, Buffer.alloc(4)]))).toThrow(/whose payload is to follow/);
      const empty = Buffer.from(header);
      empty.writeUInt32LE(0, 16);
      expect(() => new FrameReader().read(empty)).toThrow(/with a 0-byte payload/);
      // a payload small enough to travel with its header never comes alone
      const small = Buffer.from(header);
      small.writeUInt32LE(100, 16);
      expect(() => new FrameReader().read(small)).toThrow(/under 16384 bytes it comes with its header/);
    });

    it('leave the CRC out on a TLS link alike', () => {
      const messages = encodeFrameMessages(large, false);
      const reader = new FrameReader(false);
      reader.read(messages[0]!);
      expect(reader.read(messages[1]!)).toEqual(large);
      const strict = new FrameReader(true);
      strict.read(messages[0]!);
      expect(() => strict.read(messages[1]!)).toThrow(/without a CRC/);
    });
  });
});
