/** What a migration says on the link: its channel kinds and priorities, and its control messages (migration.proto). */
export { CRC_FREE_KINDS, ChannelKind, openChannel } from './channels.js';
export { receiveControl, sendControl } from './control-channel.js';
export { ControlInbox } from './control-inbox.js';
export { MigrationMessageError, type Control, type ImagesComplete, type MigrationStart, type RestoreResult } from './messages.js';
