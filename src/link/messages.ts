import protobuf from 'protobufjs';
import { messageCodec } from '../protobuf-bigint.js';
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

function codec<T>(name: string) {
  return messageCodec<T>(root.lookupType(`haul.link.${name}`), (cause) => new LinkProtocolError(`malformed ${name}: ${cause instanceof Error ? cause.message : String(cause)}`));
}

export const Messages = {
  hello: codec<Hello>('Hello'),
  helloReply: codec<HelloReply>('HelloReply'),
  abort: codec<Abort>('Abort'),
};
