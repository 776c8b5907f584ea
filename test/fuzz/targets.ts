import type { FuzzTarget } from './fuzzer.js';
import { diskChanges } from './targets/disk-changes.js';
import { hookReply, hookRequest } from './targets/hook.js';
import { imageEntries, imageFile, pagemapFile } from './targets/images.js';
import { controlChannel, linkFrame, linkFrameMessages, linkHandshake, linkMessages } from './targets/link.js';
import { linkSession } from './targets/link-session.js';
import { dumpReceiver, lazyPagesClient, lazyPagesServer, pageServerHeader } from './targets/page-server.js';
import { lazyWire, pageStream } from './targets/proxy-wire.js';

/** Every decoder of bytes from outside haul's process: the link, CRIU, the hook, the disk tar. */
export const FUZZ_TARGETS: readonly FuzzTarget[] = [
  linkFrame,
  linkFrameMessages,
  linkHandshake,
  linkMessages,
  controlChannel,
  linkSession,
  pageServerHeader,
  dumpReceiver,
  lazyPagesServer,
  lazyPagesClient,
  imageEntries,
  imageFile,
  pagemapFile,
  lazyWire,
  pageStream,
  diskChanges,
  hookRequest,
  hookReply,
];
