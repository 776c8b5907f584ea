import protobuf from 'protobufjs';
import { messageCodec } from '../../src/protobuf-bigint.js';
import { packageFile } from '../../src/package-files.js';
import type * as Migration from './generated/migration.js';

const root = new protobuf.Root();
root.loadSync(packageFile('proxy/wire/migration.proto', import.meta.url), { keepCase: true });

/** A control message that does not decode: the peer is not a haul of this version, or corrupt. */
export class MigrationMessageError extends Error {
  override readonly name = 'MigrationMessageError';
  readonly code = 'HAUL_MIGRATION_MESSAGE';
}

export type MigrationStart = Migration.MigrationStart;
export type ImagesComplete = Migration.ImagesComplete;
export type RestoreResult = Migration.RestoreResult;
/** One control message: exactly one of its fields is set. */
export type Control = Migration.Control;
export type HostHello = Migration.HostHello;

const control = messageCodec<Control>(root.lookupType('haul.migration.Control'), (cause) => new MigrationMessageError(`malformed control message: ${cause instanceof Error ? cause.message : String(cause)}`, { cause }));

export const encodeControl = (message: Control): Buffer => control.encode(message);
export const decodeControl = (bytes: Buffer): Control => control.decode(bytes);

const hostHello = messageCodec<HostHello>(root.lookupType('haul.migration.HostHello'), (cause) => new MigrationMessageError(`malformed host hello: ${cause instanceof Error ? cause.message : String(cause)}`, { cause }));

export const encodeHostHello = (hello: HostHello): Buffer => hostHello.encode(hello);
export const decodeHostHello = (bytes: Buffer): HostHello => hostHello.decode(bytes);

export type PageRun = Migration.PageRun;

const pageRun = messageCodec<PageRun>(root.lookupType('haul.migration.PageRun'), (cause) => new MigrationMessageError(`malformed page record: ${cause instanceof Error ? cause.message : String(cause)}`, { cause }));

export const encodePageRun = (run: PageRun): Buffer => pageRun.encode(run);
export const decodePageRun = (bytes: Buffer): PageRun => pageRun.decode(bytes);
