import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PAGE_SIZE, fitsUnixSocketPath } from '../src/criu/index.js';
import { identify, type ProcessIdentity } from '../src/host/index.js';
import { dumpToLink, dumpToLinkLocal, type DumpToLink } from '../proxy/index.js';
import { withArgument, type HookReply } from './hook-protocol.js';
import { ObservedPostDump } from './observed-post-dump.js';
import { PAGES_STORED_MS, countCheckpointPageFiles, type ModeStart, type Outgoing, type SourceContext } from './source-context.js';
import { imagesStored } from './source-disk.js';

/** How long after Incus' post-dump step the destination's own report of the restore may take. */
const RESTORE_REPORT_MS = 30_000;

/**
 * Pre-copy through haul: the dump's page server is haul's, on a unix socket in the migration's
 * work directory where the path fits (else on loopback TCP, accepting CRIU alone), and every page
 * goes onto the link as CRIU sends it, never into Incus' checkpoint directory. Returns the dump's
 * arguments; the migration goes on in the background (follow).
 */
export async function startPreCopy(context: SourceContext, outgoing: Outgoing, how: ModeStart): Promise<HookReply> {
  const { session, record, progress } = outgoing;
  const { workDir, layout, incusScript, callerPid, args } = how;
  // CRIU sends every page to haul's page server, on a unix socket CRIU cannot cork
  // (proxy/dump-to-link.ts)
  const socketPath = join(workDir, 'page-server.sock');
  const local = fitsUnixSocketPath(socketPath);
  const forward = local
    ? await dumpToLinkLocal(session, layout, socketPath)
    : await dumpToLink(session, layout, criuOf(callerPid), { onRefused: (refused) => context.log(`${record.instance}: refused a connection to the dump's page server: ${refused instanceof Error ? refused.message : String(refused)}`, 'warning') });
  const counting = setInterval(() => context.inFlight.update(progress, { pages: forward.pages.pagesSent }), 500);
  void forward.received.finally(() => clearInterval(counting)).catch(() => {});
  const observed = await ObservedPostDump.create(workDir, incusScript);
  follow(context, outgoing, forward, observed).catch((error: Error) => context.log(`${record.instance}: following migration ${record.id} failed: ${error.message}`, 'error'));
  const pageServer = 'port' in forward ? ['--page-server', '--address', '127.0.0.1', '--port', String(forward.port)] : ['--page-server'];
  return { args: [...withArgument(args, '--action-script', observed.scriptPath), ...pageServer], ...(local ? { pageServerSocket: socketPath } : {}) };
}

/**
 * Pre-copy: until the destination holds every page (a failure before that fails CRIU's dump, and
 * Incus resumes the container), then until Incus' post-dump step and haul's destination have
 * both reported the restore, for the record. When they disagree, that is Incus 6.0.4 reporting
 * a failed restore as a success: the record says so.
 */
async function follow(context: SourceContext, outgoing: Outgoing, forward: DumpToLink, observed: ObservedPostDump): Promise<void> {
  const { session, migration, dir, record, startedAt, progress } = outgoing;
  let stored = false;
  try {
    const restoreReport = migration.restoreReport(PAGES_STORED_MS).then((result) => ({ result, at: Date.now() }));
    restoreReport.catch(() => {});
    // pages stop flowing when the link fails, and CRIU would wait on its page-server session forever
    const summary = await Promise.race([forward.received, forward.failed]);
    const pages = summary.pagesReceived;
    const checkpointPageFiles = await countCheckpointPageFiles(dir);
    await imagesStored(context, outgoing, { pages, files: 0, pageStreams: forward.pages.pageStreams });
    stored = true;
    context.inFlight.update(progress, { phase: 'restoring on the destination' });
    const incusStatus = await observed.incusPostDump();
    if (incusStatus !== 0) {
      // haul's destination says why, when it got to the restore (its report comes first)
      const reported = await Promise.race([restoreReport.then(({ result }) => result, () => undefined), sleep(1000)]);
      const why = reported && !reported.ok ? `the restore failed on the destination: ${reported.error}` : 'the destination did not restore';
      throw new Error(`Incus' post-dump step failed (${incusStatus}): ${why}, and the source resumes`);
    }
    const late = sleep(RESTORE_REPORT_MS).then(() => new Error(`no report within ${RESTORE_REPORT_MS / 1000} s of Incus'`));
    const report = await Promise.race([restoreReport.catch((error: Error) => error), late]);
    if (!(report instanceof Error) && !report.result.ok) {
      throw new Error(`Incus reported the restore as a success, but it failed on the destination (${report.result.error}); Incus 6.0.4 then lets incus move delete the source: the destination keeps a stopped copy with the disk`);
    }
    if (report instanceof Error) context.log(`${record.instance}: haul's destination did not confirm the restore (${report.message}); Incus says it succeeded`, 'warning');
    migration.finish();
    const downtimeMs = report instanceof Error ? undefined : report.at - startedAt.getTime();
    await context.records.add({ ...record, pages, bytes: pages * PAGE_SIZE, checkpointPageFiles, totalMs: Date.now() - startedAt.getTime(), ...(downtimeMs === undefined ? {} : { downtimeMs }), result: 'moved' });
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    if (!stored) forward.abandon(); // CRIU's dump fails, and Incus resumes the container
    if (session.isOpen) session.abort(reason);
    context.log(`${record.instance}: migration ${record.id} failed: ${reason}`, 'error');
    await context.records.add({ ...record, totalMs: Date.now() - startedAt.getTime(), result: 'failed', error: reason });
  } finally {
    observed.close();
    context.inFlight.end(record.id);
  }
}


/** The process the hook that asked becomes (CRIU, same pid), as the check of who connected needs it. */
function criuOf(callerPid: number | undefined): Promise<ProcessIdentity> {
  const criu = callerPid === undefined ? undefined : identify(callerPid);
  return criu ? Promise.resolve(criu) : Promise.reject(new Error('the hook did not say which process becomes CRIU, or it is gone'));
}
