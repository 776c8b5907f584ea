import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import protobuf from 'protobufjs';
import { bigintsFromWire, bigintsToWire } from '../../protobuf-bigint.js';
import { packageFile } from '../../package-files.js';
import type { inventory_entry } from './proto/generated/inventory.js';
import type { netns_entry } from './proto/generated/netdev.js';
import type { pagemap_entry, pagemap_head } from './proto/generated/pagemap.js';
import type { pstree_entry } from './proto/generated/pstree.js';
import type { stats_entry } from './proto/generated/stats.js';

/** An image entry that does not decode as its schema says, or cannot be encoded. */
export class ImageFormatError extends Error {
  override readonly name = 'ImageFormatError';
}

/** CRIU's own schemas, vendored unchanged (src/criu/images/proto/SOURCE, scripts/sync-criu-protos). */
const SCHEMA_FILES = ['inventory.proto', 'pstree.proto', 'pagemap.proto', 'stats.proto', 'netdev.proto'];

// opts.proto, which CRIU's schemas import for their printing hints, imports
// google/protobuf/descriptor.proto: protobufjs ships it
const protobufjsDir = dirname(createRequire(import.meta.url).resolve('protobufjs/package.json'));
const root = new protobuf.Root();
root.resolvePath = (origin, target) => (target.startsWith('google/protobuf/') ? join(protobufjsDir, target) : resolve(dirname(origin), target));
root.loadSync(SCHEMA_FILES.map((file) => packageFile(join('src/criu/images/proto', file), import.meta.url)), { keepCase: true });

/** Decodes and encodes one kind of entry; T is the message with 64-bit fields as bigint. */
export interface EntryCodec<T> {
  readonly name: string;
  decode(bytes: Uint8Array): T;
  encode(message: T): Buffer;
}

function codec<T>(name: string): EntryCodec<T> {
  const type = root.lookupType(name);
  return {
    name,
    decode(bytes) {
      let message: protobuf.Message;
      try {
        message = type.decode(bytes);
      } catch (error) {
        throw new ImageFormatError(`${name}: ${error instanceof Error ? error.message : String(error)}`);
      }
      const plain = type.toObject(message, { longs: String, defaults: false, arrays: false });
      return bigintsFromWire(type, plain) as T;
    },
    encode(message) {
      const plain = bigintsToWire(type, message as object);
      const problem = type.verify(type.fromObject(plain));
      if (problem) throw new ImageFormatError(`${name}: ${problem}`);
      return Buffer.from(type.encode(type.fromObject(plain)).finish());
    },
  };
}

export type PagemapHeadMessage = pagemap_head;
export type PagemapEntryMessage = pagemap_entry;
export type PstreeEntryMessage = pstree_entry;
export type InventoryEntryMessage = inventory_entry;
export type StatsEntryMessage = stats_entry;
export type NetnsEntryMessage = netns_entry;

export const Entries = {
  pagemapHead: codec<PagemapHeadMessage>('pagemap_head'),
  pagemapEntry: codec<PagemapEntryMessage>('pagemap_entry'),
  pstreeEntry: codec<PstreeEntryMessage>('pstree_entry'),
  inventoryEntry: codec<InventoryEntryMessage>('inventory_entry'),
  statsEntry: codec<StatsEntryMessage>('stats_entry'),
  netnsEntry: codec<NetnsEntryMessage>('netns_entry'),
};
