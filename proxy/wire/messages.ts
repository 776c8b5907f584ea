import protobuf from 'protobufjs';
import { messageCodec } from '../../src/protobuf-bigint.js';
import { packageFile } from '../../src/package-files.js';

const root = new protobuf.Root();
root.loadSync(packageFile('proxy/wire/migration.proto', import.meta.url), { keepCase: true });

/** A control message that does not decode: the peer is not a haul of this version, or corrupt. */
export class MigrationMessageError extends Error {
  override readonly name = 'MigrationMessageError';
  readonly code = 'HAUL_MIGRATION_MESSAGE';
}

export interface MigrationStart {
  mode: string;
  pid: number;
  criu_version: string;
  /** '' when no container manager is involved (haul migrate); proto3 reads an absent string as ''. */
  instance: string;
  migration_id: string;
  source_host: string;
  /** 0 when not set. */
  restore_timeout_ms: number;
  manager_addresses: string[];
}
export interface ImagesComplete {
  files: number;
  page_streams: number;
  bytes: bigint;
  filesystem_tars: number;
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
export interface LazyComplete {
  pages: bigint;
}
export interface Commit {
  source_pid: number;
}
export interface MigrationAccepted {
  ok: boolean;
  error: string;
}
export interface ImagesStored {
  ok: boolean;
  error: string;
}
/** One control message: exactly one of these is set. */
export interface Control {
  lazy_complete?: LazyComplete;
  migration_start?: MigrationStart;
  images_complete?: ImagesComplete;
  restore_result?: RestoreResult;
  progress?: Progress;
  commit?: Commit;
  images_stored?: ImagesStored;
  migration_accepted?: MigrationAccepted;
}

const control = messageCodec<Control>(root.lookupType('haul.migration.Control'), (cause) => new MigrationMessageError(`malformed control message: ${cause instanceof Error ? cause.message : String(cause)}`, { cause }));

export const encodeControl = (message: Control): Buffer => control.encode(message);
export const decodeControl = (bytes: Buffer): Control => control.decode(bytes);
