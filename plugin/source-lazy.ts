import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { PAGE_SIZE, type HeaderLayout, isPagesFileName } from '../src/criu/index.js';
import { identify, type ProcessIdentity } from '../src/host/index.js';
import { LazyDump, runLazySource } from '../proxy/index.js';
import { withArgument, type HookReply } from './hook-protocol.js';
import { LazyEarlyActions } from './lazy-early-actions.js';
import { countCheckpointPageFiles, type ModeStart, type Outgoing, type SourceContext } from './source-context.js';
import { sendDiskChanges } from './source-disk.js';

/** Lazy: how long the push of pages nobody faulted waits for the destination's restore report. */
const PUSH_HOLD_MS = 10_000;

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
 * Lazy, the engine's run (runLazySource) with Incus' post-dump step beside it: the pagemaps went
 * into Incus' directory with the other images at post-dump (LazyEarlyActions), the few pages that
 * cannot be lazy go over as files with the disk changes, and the source ends only when the
 * destination has every page and Incus' own post-dump step reported the restore too.
 */
async function followLazy(context: SourceContext, outgoing: Outgoing, actions: LazyEarlyActions, layout: HeaderLayout, dump: { readonly dumpDir: string; readonly lazy: LazyDump; readonly criu: ProcessIdentity }): Promise<void> {
  const { migration, dir, record, startedAt, progress } = outgoing;
  const { dumpDir } = dump;
  let incusFailure: string | undefined;
  void actions.incusPostDump.then((status) => status !== 0 && (incusFailure = `Incus' post-dump step failed (${status}): the destination did not restore`)).catch(() => {});
  let eager = 0;
  let checkpointPageFiles = 0;
  try {
    const run = await runLazySource(migration, dump.lazy, {
      criu: dump.criu,
      layout,
      postDump: actions.postDump,
      statusReady: actions.statusReady,
      dumpDir,
      pagemapDir: dir,
      sendRest: async (eagerPages) => {
        eager = eagerPages;
        checkpointPageFiles = await countCheckpointPageFiles(dir);
        const { files } = await migration.sendImages(dumpDir, isPagesFileName);
        return { files, bytes: 0, filesystemTars: await sendDiskChanges(context, outgoing, eagerPages) };
      },
      // CRIU resumes the source: it fails post-dump when not past it yet, else haul ends its lazy
      // page server's session with a bad header (CRIU would wait for a lazy client for good)
      failPostDump: async () => actions.abandon(),
      onResumeUnreached: (failure) => context.log(`${record.instance}: could not end CRIU's lazy page server: ${failure.message}`, 'error'),
      managerFailure: () => incusFailure,
      holdPush: { hint: actions.incusPostDump, atMostMs: PUSH_HOLD_MS },
      onPhase: (phase, { eagerPages, lazyPages }) => {
        if (phase === 'moving-lazy-pages') {
          context.log(`${record.instance}: ${lazyPages} lazy pages to move`);
          context.inFlight.update(progress, { phase: 'restored on the destination; moving its memory', pages: eagerPages, totalPages: eagerPages + lazyPages });
        }
        if (phase === 'awaiting-last-page') {
          context.inFlight.update(progress, { phase: "waiting for the destination's last page and Incus' restore report" });
          context.log(`${record.instance}: all lazy pages sent; waiting for the destination and for Incus' restore report`);
        }
      },
      onPages: (moved) => context.inFlight.update(progress, { pages: eager + moved }),
      managerVerdict: async () => {
        const status = await actions.incusPostDump;
        context.log(`${record.instance}: Incus' post-dump step ended with ${status}`);
        if (status !== 0) throw new Error(incusFailure ?? `Incus' post-dump step failed (${status})`);
      },
    });
    migration.finish();
    const pages = run.eagerPages + run.lazyPages;
    const downtimeMs = run.restoredAt - startedAt.getTime();
    await context.records.add({ ...record, pages, bytes: pages * PAGE_SIZE, checkpointPageFiles, totalMs: Date.now() - startedAt.getTime(), downtimeMs, result: 'moved' });
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
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
    await actions.close();
  }
}
