import { ChannelPriority, type LinkSession, type OutgoingChannel } from '../../src/link/index.js';

/** What a migration's channel carries: the kind its OPEN frame names, which the receiver dispatches on. */
export const ChannelKind = {
  CONTROL: 1,
  IMAGE_FILE: 2,
  PAGES: 3,
  LAZY_REQUESTS: 4,
  LAZY_ANSWERS: 5,
  FILESYSTEM_TAR: 6,
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
};

/** Opens a channel of `kind` on the session, at the priority its kind has. */
export function openChannel(session: LinkSession, kind: ChannelKind, name: string): OutgoingChannel {
  return session.openChannel(kind, name, PRIORITY[kind]);
}
