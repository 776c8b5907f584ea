import { FrameType, decodeFrame, encodeFrame } from './frame.js';
import { LinkProtocolError } from './link-errors.js';
import { Messages, type Hello, type HelloReply } from './messages.js';

/**
 * Bumped whenever the frames, the handshake or what the application carries change incompatibly.
 * 2: a channel opens with INITIAL_CHANNEL_WINDOW of credit, not CHANNEL_WINDOW; a version-1 sender
 * would overrun it. 3: the handshake carries the application's hello as opaque bytes (checked by
 * its own callback), and the migration's messages moved with it (proxy/wire/migration.proto).
 * 4: a large payload goes as a message of its own behind its header (frame.ts). 5: on a plain link,
 * DATA frames of the application's crcFreeKinds carry a CRC of their 20 header bytes only (flag
 * bit 2), and a DATA frame must name its channel's kind.
 */
export const PROTOCOL_VERSION = 5;

export function helloFrame(hello: Hello): Buffer {
  return encodeFrame({ type: FrameType.HELLO, kind: 0, channel: 0, offset: 0n, payload: Messages.hello.encode(hello) });
}

export function helloReplyFrame(reply: HelloReply): Buffer {
  return encodeFrame({ type: FrameType.HELLO_REPLY, kind: 0, channel: 0, offset: 0n, payload: Messages.helloReply.encode(reply) });
}

export function parseHello(bytes: Buffer): Hello {
  const frame = decodeFrame(bytes);
  if (frame.type !== FrameType.HELLO) throw new LinkProtocolError(`expected a handshake, got frame type 0x${frame.type.toString(16)}`);
  const hello = Messages.hello.decode(frame.payload);
  if (hello.protocol_version !== PROTOCOL_VERSION) {
    throw new LinkProtocolError(`haul link protocol ${hello.protocol_version} from the peer, this side speaks ${PROTOCOL_VERSION}: run the same haul version on both hosts`);
  }
  if (hello.session_id.length !== 16) throw new LinkProtocolError('handshake without a 16-byte session id');
  return hello;
}

export function parseHelloReply(bytes: Buffer): HelloReply {
  const frame = decodeFrame(bytes);
  if (frame.type !== FrameType.HELLO_REPLY) throw new LinkProtocolError(`expected a handshake reply, got frame type 0x${frame.type.toString(16)}`);
  const reply = Messages.helloReply.decode(frame.payload);
  if (reply.refusal) throw new LinkProtocolError(`the peer refused the link: ${reply.refusal}`, { code: 'HAUL_LINK_REFUSED' });
  if (reply.protocol_version !== PROTOCOL_VERSION) {
    throw new LinkProtocolError(`haul link protocol ${reply.protocol_version} from the peer, this side speaks ${PROTOCOL_VERSION}: run the same haul version on both hosts`);
  }
  return reply;
}
