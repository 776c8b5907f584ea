import { ChannelPriority, type LinkSession, type OutgoingChannel } from '../../src/link/index.js';

/** What a migration's channel carries: the kind its OPEN frame names, which the receiver dispatches on. */
export const ChannelKind = {
  CONTROL: 1,
  IMAGE_FILE: 2,
  PAGES: 3,
  LAZY_REQUESTS: 4,
  LAZY_ANSWERS: 5,
  FILESYSTEM_TAR: 6,
  /** The lazy pages the source pushes ahead of faults (proxy/lazy-wire.ts): CRIU takes them as they come. */
  LAZY_PUSH: 7,
} as const;
export type ChannelKind = (typeof ChannelKind)[keyof typeof ChannelKind];

/**
 * Lazy-page traffic and control overtake image files, which overtake bulk pages and the disk
 * changes: a page fault of the restored copy waits behind no bulk transfer, and the small images
 * a restore starts from are not held up by the memory.
 */
const PRIORITY: Readonly<Record<ChannelKind, ChannelPriority>> = {
  [ChannelKind.CONTROL]: ChannelPriority.FIRST,
  [ChannelKind.LAZY_REQUESTS]: ChannelPriority.FIRST,
  [ChannelKind.LAZY_ANSWERS]: ChannelPriority.FIRST,
  [ChannelKind.IMAGE_FILE]: ChannelPriority.SECOND,
  [ChannelKind.PAGES]: ChannelPriority.LAST,
  [ChannelKind.FILESYSTEM_TAR]: ChannelPriority.LAST,
  [ChannelKind.LAZY_PUSH]: ChannelPriority.LAST,
};

/**
 * The kinds whose bytes the destination uses only once the image set is complete, every channel's
 * digest checked (proxy/cache-store.ts): on a plain link their DATA frames' CRC covers the header only. Not
 * control, nor lazy requests, answers and pushes, which are acted on as they come.
 */
export const CRC_FREE_KINDS: ReadonlySet<ChannelKind> = new Set([ChannelKind.IMAGE_FILE, ChannelKind.PAGES, ChannelKind.FILESYSTEM_TAR]);

/** Opens a channel of `kind` on the session, at the priority its kind has. */
export function openChannel(session: LinkSession, kind: ChannelKind, name: string): OutgoingChannel {
  return session.openChannel(kind, name, PRIORITY[kind]);
}
