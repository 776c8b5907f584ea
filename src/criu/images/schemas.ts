import { join } from 'node:path';
import protobuf from 'protobufjs';
import { bigintsFromWire, bigintsToWire } from '../../protobuf-bigint.js';
import { packageFile } from '../../package-files.js';

/** An image entry that does not decode as its schema says, or cannot be encoded. */
export class ImageFormatError extends Error {
  override readonly name = 'ImageFormatError';
}

const SCHEMA_FILES = ['inventory.proto', 'pstree.proto', 'pagemap.proto', 'stats.proto'];

const root = new protobuf.Root();
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

export interface PagemapHeadMessage {
  pages_id: number;
}
export interface PagemapEntryMessage {
  vaddr: bigint;
  compat_nr_pages: number;
  in_parent?: boolean;
  flags?: number;
  nr_pages?: bigint;
}
export interface PstreeEntryMessage {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  threads?: number[];
}
export interface TaskKobjIds {
  vm_id: number;
  files_id: number;
  fs_id: number;
  sighand_id: number;
  pid_ns_id?: number;
  net_ns_id?: number;
  ipc_ns_id?: number;
  uts_ns_id?: number;
  mnt_ns_id?: number;
  user_ns_id?: number;
  cgroup_ns_id?: number;
  time_ns_id?: number;
}
export interface InventoryEntryMessage {
  img_version: number;
  fdinfo_per_id?: boolean;
  root_ids?: TaskKobjIds;
  ns_per_id?: boolean;
  root_cg_set?: number;
  lsmtype?: number;
  dump_uptime?: bigint;
  pre_dump_mode?: number;
  tcp_close?: boolean;
  network_lock_method?: number;
  plugins_entry?: { plugins?: string[] };
  dump_criu_run_id?: string;
  allow_uprobes?: boolean;
}
export interface DumpStatsMessage {
  freezing_time: number;
  frozen_time: number;
  memdump_time: number;
  memwrite_time: number;
  pages_scanned: bigint;
  pages_skipped_parent: bigint;
  pages_written: bigint;
  irmap_resolve?: number;
  pages_lazy: bigint;
  page_pipes?: bigint;
  page_pipe_bufs?: bigint;
  shpages_scanned?: bigint;
  shpages_skipped_parent?: bigint;
  shpages_written?: bigint;
}
export interface RestoreStatsMessage {
  pages_compared: bigint;
  pages_skipped_cow: bigint;
  forking_time: number;
  restore_time: number;
  pages_restored?: bigint;
}
export interface StatsEntryMessage {
  dump?: DumpStatsMessage;
  restore?: RestoreStatsMessage;
}

export const Entries = {
  pagemapHead: codec<PagemapHeadMessage>('pagemap_head'),
  pagemapEntry: codec<PagemapEntryMessage>('pagemap_entry'),
  pstreeEntry: codec<PstreeEntryMessage>('pstree_entry'),
  inventoryEntry: codec<InventoryEntryMessage>('inventory_entry'),
  statsEntry: codec<StatsEntryMessage>('stats_entry'),
};
