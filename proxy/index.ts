/**
 * The migration engine: the image-proxy on the source, the image-cache on the destination, and the
 * steps the Incus plugin drives between them.
 */
export { MODES, parseMode, type Mode } from './mode.js';
export { compatibilityProblem, helloOf, hostHandshake, peerHost, shownWord, MIGRATION_PROTOCOL, type HostHello, type HostSelf } from './host-hello.js';
export { CRC_FREE_KINDS, ChannelKind, openChannel } from './wire/index.js';
export { migrateLazy, migratePreCopy, type MigrateOptions, type MigrationSummary } from './image-proxy.js';
export { MigrationFailedError, MigrationInDoubtError } from './migration-errors.js';
export { ImageCache, type CacheEvent, type CacheOptions } from './image-cache.js';
export { SourceMigration, type ImageSetSent, type MigrationAnnouncement } from './source-migration.js';
export { runPreCopySource, type PreCopySourceSeams, type RestOfImageSet, type SourcePhase } from './source-pre-copy.js';
export { runLazySource, type LazySourceSeams } from './source-lazy.js';
export { DestinationMigration, type CommitOutcome, type RestoreOutcome } from './destination-migration.js';
export { DISK_CHANGES_FILE, discardImages } from './cache-store.js';
export { applyDiskChanges, type OwnerIds } from './disk-changes-apply.js';
export { packDiskChanges } from './disk-changes-pack.js';
export { ensureRoomFor } from './disk-reserve.js';
export { dumpToLink, dumpToLinkLocal, type DumpToLink } from './dump-to-link.js';
export type { LazyCopyGuard } from './lazy-copy-guard.js';
export type { LazyPageStore } from './lazy-page-store.js';
export type { LazyPageService } from './lazy-restore.js';
export { LazyDump } from './lazy-dump.js';
