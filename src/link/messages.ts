import protobuf from 'protobufjs';
import { bigintsFromWire, bigintsToWire } from '../protobuf-bigint.js';
import { packageFile } from '../package-files.js';
import { LinkProtocolError } from './frame.js';

const root = new protobuf.Root();
root.loadSync(packageFile('src/link/proto/link.proto', import.meta.url), { keepCase: true });

export interface HostInfo {
  criu_version: string;
  page_size: number;
  architecture: string;
  capabilities: string[];
  haul_version: string;
  role: string;
}
export interface ChannelProgress {
  channel: number;
  received: bigint;
  ended: boolean;
}
export interface Hello {
  protocol_version: number;
  session_id: Buffer;
  resume: boolean;
  host: HostInfo;
  received: ChannelProgress[];
}
export interface HelloReply {
  protocol_version: number;
  resumed: boolean;
  host: HostInfo;
  received: ChannelProgress[];
  refusal: string;
}
export interface Abort {
  reason: string;
  origin: string;
  /** A link error's code (link-errors.ts), or '' when the application gave its own reason. */
  code: string;
}

interface MessageCodec<T> {
  encode(message: T): Buffer;
  decode(bytes: Buffer): T;
}

function codec<T>(name: string): MessageCodec<T> {
  const type = root.lookupType(`haul.link.${name}`);
  return {
    encode: (message) => Buffer.from(type.encode(type.fromObject(bigintsToWire(type, message as object))).finish()),
    decode: (bytes) => {
      try {
        return bigintsFromWire(type, type.toObject(type.decode(bytes), { longs: String, bytes: Buffer, defaults: true, arrays: true, oneofs: false })) as T;
      } catch (error) {
        throw new LinkProtocolError(`malformed ${name}: ${error instanceof Error ? error.message : String(error)}`);
      }
    },
  };
}

export const Messages = {
  hello: codec<Hello>('Hello'),
  helloReply: codec<HelloReply>('HelloReply'),
  abort: codec<Abort>('Abort'),
};
