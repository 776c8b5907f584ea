import protobuf from 'protobufjs';
import { messageCodec, type Decoded } from '../protobuf-bigint.js';
import { packageFile } from '../package-files.js';
import { LinkProtocolError } from './frame.js';
import type * as Link from './proto/generated/link.js';

const root = new protobuf.Root();
root.loadSync(packageFile('src/link/proto/link.proto', import.meta.url), { keepCase: true });

export type Hello = Decoded<Link.Hello>;
export type HelloReply = Decoded<Link.HelloReply>;
export type Abort = Decoded<Link.Abort>;
export type ChannelProgress = Link.ChannelProgress;

function codec<T>(name: string) {
  return messageCodec<T>(root.lookupType(`haul.link.${name}`), (cause) => new LinkProtocolError(`malformed ${name}: ${cause instanceof Error ? cause.message : String(cause)}`));
}

export const Messages = {
  hello: codec<Link.Hello>('Hello'),
  helloReply: codec<Link.HelloReply>('HelloReply'),
  abort: codec<Link.Abort>('Abort'),
};
