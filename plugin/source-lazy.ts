import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PAGE_SIZE, type HeaderLayout, isPagesFileName, lazyRunsIn, pagesStoredIn } from '../src/criu/index.js';
import type { LinkSession } from '../src/link/index.js';
import { identify, isRunning, type ProcessIdentity } from '../src/host/index.js';
import { LazyDump } from '../proxy/index.js';
import { withArgument, type HookReply } from './hook-protocol.js';
import { LazyEarlyActions } from './lazy-early-actions.js';
import { PAGES_STORED_MS, countCheckpointPageFiles, type ModeStart, type Outgoing, type SourceContext } from './source-context.js';
import { imagesStored } from './source-disk.js';

/** Lazy: how long the push of pages nobody faulted waits for the destination's restore report. */
const PUSH_HOLD_MS = 10_000;
/** How often a lazy dump's CRIU is looked at until post-dump. */
const DUMP_POLL_MS = 250;

/**
 * Lazy (post-copy) through haul, the dump written as LazyDump (proxy/lazy-dump.ts) sets it up:
 * returns the dump's arguments; the migration goes on in the background (followLazy).
 */
export async function startLazy(context: SourceContext, outgoing: Outgoing, how: ModeStart): Promise<HookReply> {
  const { session, dir, record } = outgoing;
  const { workDir, layout, incusScript, callerPid, args } = how;
  // Lazy: CRIU 4.1.1 cannot take a --ps-socket with --lazy-pages, and on TCP it corks its
  // page-server connection (proxy/dump-to-link.ts) and the end of the dump would wait for the
  // kernel's cork timer inside the freeze. So the dump writes to haul's own directory, and
  // at post-dump its images but the page data move into Incus' (LazyEarlyActions); the few
  // pages that cannot be lazy go over the link as files.
  const dumpDir = join(workDir, 'images');
  await mkdir(dumpDir, { mode: 0o700 });
  // CRIU serves lazy pages to whoever connects first and believes a CLOSE from anyone: only
  // root may connect to its port (src/host/loopback-guard.ts), and haul checks it reached CRIU
  const criu = callerPid === undefined ? undefined : identify(callerPid);
  if (!criu) throw new Error("the hook did not say which process becomes CRIU, so haul could not tell CRIU's lazy page server from an impostor");
  // nothing but haul's lazy client is to connect there: root's other sockets neither (an
  // Incus proxy device's forkproxy)
  const lazy = await LazyDump.prepare();
  if (lazy.bindableByAnyone) context.log(`${record.instance}: ${lazy.bindableByAnyone}; a local user who binds port ${lazy.port} first can make this move fail (not take it over)`, 'warning');
  const actions = await LazyEarlyActions.create(workDir, incusScript, { dumpDir, checkpointDir: dir }).catch(async (error: unknown) => {
    await lazy.releaseWhenGone(undefined);
    throw error;
  });
  if (!session.isOpen) {
    // the link failed while all this was made: the dump runs natively
    await actions.close();
    await lazy.releaseWhenGone(undefined);
    throw new Error('the link to the destination failed while the dump was prepared');
  }
  followLazy(context, outgoing, actions, layout, { dumpDir, lazy, criu })
    .catch((error: Error) => context.log(`${record.instance}: following lazy migration ${record.id} failed: ${error.message}`, 'error'));
  const lazyArgs = withArgument(withArgument(args, '--action-script', actions.scriptPath), '-D', dumpDir);
  return { args: [...lazyArgs, ...lazy.criuArgs()] };
}

/**
 * Until the lazy dump is over and its images are in Incus' directory; fails when the link does,
 * or when CRIU ends without getting there (it failed, and the source runs on).
 */
async function dumpOver(actions: LazyEarlyActions, session: LinkSession, criu: ProcessIdentity | undefined): Promise<void> {
  let over = false;
  // the link may have failed while the hook's answer was made, before anything listened
  const aborted = session.isOpen ? new Promise<never>((_, reject) => session.once('aborted', (error: Error) => reject(error))) : Promise.reject(new Error('the link to the destination failed before the dump began'));
  aborted.catch(() => {});
  const criuEnded = (async (): Promise<never> => {
    while (!over && (!criu || isRunning(criu))) await sleep(DUMP_POLL_MS);
    throw new Error('criu dump ended before its post-dump step: the dump failed (see its log in the instance\'s log directory)');
  })();
  criuEnded.catch(() => {});
  try {
    await Promise.race([actions.postDump, aborted, criuEnded]);
  } finally {
    over = true;
  }
}

/**
 * Lazy: once the dump is over, the pages that could not be lazy (as files) and the disk changes;
 * then, once CRIU's lazy page server listens on the guarded port, every lazy page, faults first. The
 * source ends (its page-server session closes) only when the destination has every page and
 * Incus' own post-dump step reported the restore; on any failure a bad header makes CRIU resume
 * it. `criu`: the dump's process, so that a dump that fails before post-dump is not waited for.
 */
async function followLazy(context: SourceContext, outgoing: Outgoing, actions: LazyEarlyActions, layout: HeaderLayout, dump: { readonly dumpDir: string; readonly lazy: LazyDump; readonly criu: ProcessIdentity }): Promise<void> {
  const { session, migration, dir, record, startedAt, progress } = outgoing;
  const { dumpDir } = dump;
  let resuming: Promise<void> | undefined;
  let incusFailure: string | undefined;
  void actions.incusPostDump.then((status) => status !== 0 && (incusFailure = `Incus' post-dump step failed (${status}): the destination did not restore`)).catch(() => {});
  // haul's destination reports the restore itself too: Incus' word alone can call a failure a success
  let restoreFailure: string | undefined;
  let restoredAt: number | undefined;
  const restoreReported = migration.restoreReport(PAGES_STORED_MS).then(
    (result) => void (result.ok ? (restoredAt = Date.now()) : (restoreFailure = `the restore failed on the destination: ${result.error}`)),
    () => {},
  );
  try {
    await dumpOver(actions, session, dump.criu);
    const eager = await pagesStoredIn(dumpDir);
    const checkpointPageFiles = await countCheckpointPageFiles(dir);
    const lazyRuns = await lazyRunsIn(dir); // the pagemaps went with the other images
    const { files } = await migration.sendImages(dumpDir, isPagesFileName);
    await imagesStored(context, outgoing, { pages: eager, files, pageStreams: 0 });
    const client = await dump.lazy.connect(dump.criu, layout, actions.statusReady);
    const total = lazyRuns.reduce((sum, run) => sum + run.nrPages, 0);
    context.log(`${record.instance}: ${total} lazy pages to move`);
    context.inFlight.update(progress, { phase: 'restored on the destination; moving its memory', pages: eager, totalPages: eager + total });
    const pulled = await migration.movePages(client, lazyRuns, {
      stop: () => incusFailure ?? restoreFailure,
      // while the destination restores, its faults alone: pushing the rest then (a whole
      // container's memory at 1 GiB) slowed the restore and Incus' own steps on the way to it
      pushFrom: Promise.race([restoreReported, actions.incusPostDump, sleep(PUSH_HOLD_MS)]),
      onPages: (moved) => context.inFlight.update(progress, { pages: eager + moved }),
    });
    context.inFlight.update(progress, { phase: "waiting for the destination's last page and Incus' restore report" });
    context.log(`${record.instance}: all ${pulled} lazy pages sent; waiting for the destination and for Incus' restore report`);
    await migration.lazyComplete(PAGES_STORED_MS);
    const status = await actions.incusPostDump;
    context.log(`${record.instance}: Incus' post-dump step ended with ${status}`);
    if (status !== 0) throw new Error(incusFailure!);
    if (restoreFailure) throw new Error(restoreFailure);
    await dump.lazy.end(); // every page has moved and Incus restored it: CRIU ends the source
    migration.finish();
    const pages = eager + pulled;
    const downtimeMs = restoredAt === undefined ? undefined : restoredAt - startedAt.getTime();
    await context.records.add({ ...record, pages, bytes: pages * PAGE_SIZE, checkpointPageFiles, totalMs: Date.now() - startedAt.getTime(), ...(downtimeMs === undefined ? {} : { downtimeMs }), result: 'moved' });
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    // CRIU resumes the source: it fails post-dump when not past it yet, else haul ends its lazy
    // page server's session with a bad header (CRIU would wait for a lazy client for good)
    if (!actions.abandon()) resuming = dump.lazy.resume(actions.statusReady).catch((failure: Error) => context.log(`${record.instance}: could not end CRIU's lazy page server: ${failure.message}`, 'error'));
    if (session.isOpen) session.abort(reason);
    context.log(`${record.instance}: lazy migration ${record.id} failed: ${reason}`, 'error');
    await context.records.add({ ...record, totalMs: Date.now() - startedAt.getTime(), result: 'failed', error: reason });
  } finally {
    context.inFlight.end(record.id);
    // CRIU may still be on its way to listening (a failure came first: it goes on to its lazy
    // page server all the same), and would take any client then: the guard goes only with CRIU,
    // or by its own timeout (released already when haul was seen connected to CRIU)
    dump.lazy.releaseWhenGone(dump.criu).then((released) => {
      if (released === 'criu-runs') context.log(`${record.instance}: CRIU's lazy dump ${dump.criu.pid} still runs; its port stays guarded until the guard expires`, 'warning');
    }).catch((failure: Error) => context.log(`${record.instance}: could not release the guard of port ${dump.lazy.port}: ${failure.message}`, 'warning'));
    // the resume waits for CRIU's status-ready, which the script reports: not closed before it
    await resuming;
    await actions.close();
    // the page data haul sent; the rest of the directory is swept later (CRIU writes its stats
    // there as it ends)
    for (const name of await readdir(dumpDir).catch(() => [])) if (isPagesFileName(name)) await rm(join(dumpDir, name), { force: true });
  }
}
