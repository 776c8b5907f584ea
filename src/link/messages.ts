import { join } from 'node:path';
import protobuf from 'protobufjs';
import { schemaDirectory } from '../schema-files.js';
import { LinkProtocolError } from './frame.js';

const root = new protobuf.Root();
root.loadSync(join(schemaDirectory('link/proto', import.meta.url, 'link.proto'), 'link.proto'), { keepCase: true });

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
export interface ChannelOpen {
  name: string;
}
export interface Abort {
  reason: string;
  origin: string;
}

export interface MigrationStart {
  mode: string;
  pid: number;
  criu_version: string;
}
export interface ImagesComplete {
  files: number;
  page_streams: number;
  bytes: bigint;
}
export interface RestoreResult {
  ok: boolean;
  error: string;
  pid: number;
}
export interface Progress {
  pages: bigint;
  bytes: bigint;
}
/** One control message: exactly one of these is set. */
export interface Control {
  migration_start?: MigrationStart;
  images_complete?: ImagesComplete;
  restore_result?: RestoreResult;
  progress?: Progress;
}

interface MessageCodec<T> {
  encode(message: T): Buffer;
  decode(bytes: Buffer): T;
}

type Plain = Record<string, unknown>;

// protobufjs hands 64-bit fields over as strings (longs: String); the messages use bigint.
const progressToWire = (message: Plain): Plain =>
  Array.isArray(message['received'])
    ? { ...message, received: (message['received'] as ChannelProgress[]).map((p) => ({ ...p, received: p.received.toString() })) }
    : message;
const progressFromWire = (message: Plain): Plain =>
  Array.isArray(message['received'])
    ? { ...message, received: (message['received'] as Array<Plain>).map((p) => ({ ...p, received: BigInt(p['received'] as string) })) }
    : message;

function codec<T>(name: string): MessageCodec<T> {
  const type = root.lookupType(`haul.link.${name}`);
  return {
    encode: (message) => Buffer.from(type.encode(type.fromObject(progressToWire(message as Plain))).finish()),
    decode: (bytes) => {
      try {
        return progressFromWire(type.toObject(type.decode(bytes), { longs: String, bytes: Buffer, defaults: true, arrays: true })) as T;
      } catch (error) {
        throw new LinkProtocolError(`malformed ${name}: ${error instanceof Error ? error.message : String(error)}`);
      }
    },
  };
}

export const Messages = {
  hello: codec<Hello>('Hello'),
  helloReply: codec<HelloReply>('HelloReply'),
  channelOpen: codec<ChannelOpen>('ChannelOpen'),
  abort: codec<Abort>('Abort'),
  control: controlCodec(),
};

// Control messages carry 64-bit counters; they travel as strings through protobufjs.
function controlCodec(): MessageCodec<Control> {
  const type = root.lookupType('haul.link.Control');
  const SIXTY_FOUR = new Set(['bytes', 'pages']);
  const convert = (value: unknown, to: (v: unknown) => unknown): unknown =>
    value && typeof value === 'object' && !Buffer.isBuffer(value)
      ? Object.fromEntries(Object.entries(value).map(([k, v]) => [k, SIXTY_FOUR.has(k) ? to(v) : convert(v, to)]))
      : value;
  return {
    encode: (message) => Buffer.from(type.encode(type.fromObject(convert(message, (v) => String(v)) as Plain)).finish()),
    decode: (bytes) => {
      try {
        const plain = type.toObject(type.decode(bytes), { longs: String, defaults: true, oneofs: false });
        return convert(plain, (v) => BigInt(v as string)) as Control;
      } catch (error) {
        throw new LinkProtocolError(`malformed Control: ${error instanceof Error ? error.message : String(error)}`);
      }
    },
  };
}
