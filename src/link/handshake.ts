import { FrameType, decodeFrame, encodeFrame } from './frame.js';
import { LinkProtocolError } from './link-errors.js';
import { Messages, type Hello, type HelloReply, type HostInfo } from './messages.js';

/**
 * Bumped whenever the frames or the control messages change incompatibly. 2: a channel opens with
 * INITIAL_CHANNEL_WINDOW of credit, not CHANNEL_WINDOW; a version-1 sender would overrun it.
 */
export const PROTOCOL_VERSION = 2;

/** Links are refused only where no bridging is possible; the reason says what to change. */
export function compatibilityProblem(source: HostInfo, destination: HostInfo): string | undefined {
  if (source.page_size !== destination.page_size) {
    return `page size ${source.page_size} on the source but ${destination.page_size} on the destination`;
  }
  if (source.architecture !== destination.architecture) {
    return `a ${source.architecture} source cannot move processes to a ${destination.architecture} destination`;
  }
  const version = (text: string): [number, number] => {
    const match = /^(\d+)\.(\d+)/.exec(text);
    return match ? [Number(match[1]), Number(match[2])] : [0, 0];
  };
  const [sourceMajor, sourceMinor] = version(source.criu_version);
  const [destMajor, destMinor] = version(destination.criu_version);
  const atLeast42 = (major: number, minor: number): boolean => major > 4 || (major === 4 && minor >= 2);
  if (atLeast42(sourceMajor, sourceMinor) && !atLeast42(destMajor, destMinor)) {
    return `CRIU ${source.criu_version} on the source writes pagemaps that CRIU ${destination.criu_version} on the destination reads as empty; install CRIU 4.2 or later there`;
  }
  return undefined;
}

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
