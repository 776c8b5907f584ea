/**
 * CRIU's edge: its page-server protocol (src/criu/page-server), its image files (src/criu/images),
 * and running it (src/criu/run). Nothing here knows what a migration is.
 */
export { PAGE_SIZE, PageFlag, type HeaderLayout, type PagemapTarget } from './page-server/protocol.js';
export { acceptOne, acceptOneLocal, fitsUnixSocketPath, type ConnectionCheck } from './page-server/connection.js';
export { receiveDump, type DumpSummary, type PagemapSink } from './page-server/dump-receiver.js';
export { LazyPagesClient, type PagesAnswer } from './page-server/lazy-pages-client.js';
export type { PageSource } from './page-server/lazy-pages-server.js';
export { criuImageName, isCriuImageName } from './images/image-names.js';
export { FIRST_PAGES_ID } from './images/image-dir-sink.js';
export { isNetnsImageName, netnsImageForEveryCriu, readNetnsImage, writeNetnsImagesForEveryCriu } from './images/netns.js';
export { PagemapWriter, isPagesFileName, lazyRunsIn, pagesStoredIn, writePagemapsForEveryCriu, type LazyRun, type PagemapEntry } from './images/pagemap.js';
export { CriuError, DEFAULT_CRIU, criuLogErrors, runCriu, startCriu, type CriuOptions, type CriuProcess } from './run/criu-process.js';
export { criuVersion, headerLayoutFor, type CriuVersion } from './run/criu-version.js';
export { startLazyPagesDaemon, type LazyPagesDaemon } from './run/lazy-pages-daemon.js';
export { ActionScript, ActionScriptClosedError, type ActionScriptPlan, type ActionStep } from './run/action-script.js';
export { RestoredTree } from './run/restored-tree.js';
