import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PAGE_SIZE, fitsUnixSocketPath } from '../src/criu/index.js';
import { identify, type ProcessIdentity } from '../src/host/index.js';
import { dumpToLink, dumpToLinkLocal, runPreCopySource, type DumpToLink } from '../proxy/index.js';
import { withArgument, type HookReply } from './hook-protocol.js';
import { ObservedPostDump } from './observed-post-dump.js';
import { countCheckpointPageFiles, type ModeStart, type Outgoing, type SourceContext } from './source-context.js';
import { sendDiskChanges } from './source-disk.js';

/** How long after Incus' post-dump step the destination's own report of the restore may take. */
const RESTORE_REPORT_MS = 30_000;

/**
 * Pre-copy through haul: the dump's page server is haul's, on a unix socket in the migration's
 * work directory where the path fits (else on loopback TCP, accepting CRIU alone), and every page
 * goes onto the link as CRIU sends it, never into Incus' checkpoint directory. Returns the dump's
 * arguments; the migration goes on in the background (follow).
 */
export async function startPreCopy(context: SourceContext, outgoing: Outgoing, how: ModeStart): Promise<HookReply> {
  const { session, record } = outgoing;
  const { workDir, layout, incusScript, callerPid, args } = how;
  // CRIU sends every page to haul's page server, on a unix socket CRIU cannot cork
  // (proxy/dump-to-link.ts)
  const socketPath = join(workDir, 'page-server.sock');
  const local = fitsUnixSocketPath(socketPath);
  const forward = local
    ? await dumpToLinkLocal(session, layout, socketPath)
    : await dumpToLink(session, layout, criuOf(callerPid), { onRefused: (refused) => context.log(`${record.instance}: refused a connection to the dump's page server: ${refused instanceof Error ? refused.message : String(refused)}`, 'warning') });
  const observed = await ObservedPostDump.create(workDir, incusScript);
  follow(context, outgoing, forward, observed).catch((error: Error) => context.log(`${record.instance}: following migration ${record.id} failed: ${error.message}`, 'error'));
  const pageServer = 'port' in forward ? ['--page-server', '--address', '127.0.0.1', '--port', String(forward.port)] : ['--page-server'];
  return { args: [...withArgument(args, '--action-script', observed.scriptPath), ...pageServer], ...(local ? { pageServerSocket: socketPath } : {}) };
}

/**
 * Pre-copy, the engine's run (runPreCopySource) with Incus' post-dump step as the restore target:
 * until the destination holds every page (a failure before that fails CRIU's dump, and Incus
 * resumes the container), then until Incus' post-dump step and haul's destination have both
 * reported the restore, for the record. When they disagree, that is Incus 6.0.4 reporting a failed
 * restore as a success: the record says so.
 */
async function follow(context: SourceContext, outgoing: Outgoing, intake: DumpToLink, observed: ObservedPostDump): Promise<void> {
  const { migration, dir, record, startedAt, progress } = outgoing;
  try {
    let checkpointPageFiles = 0;
    const run = await runPreCopySource(migration, intake, {
      dumped: intake.received,
      onPages: (pages) => context.inFlight.update(progress, { pages }),
      sendRest: async (pages) => {
        checkpointPageFiles = await countCheckpointPageFiles(dir);
        return { files: 0, bytes: 0, filesystemTars: await sendDiskChanges(context, outgoing, pages) };
      },
      onPhase: (phase) => phase === 'restoring' && context.inFlight.update(progress, { phase: 'restoring on the destination' }),
      restored: async (report) => {
        const incusStatus = await observed.incusPostDump();
        if (incusStatus !== 0) {
          // haul's destination says why, when it got to the restore (its report comes first)
          const reported = await Promise.race([report.then(({ result }) => result, () => undefined), sleep(1000)]);
          const why = reported && !reported.ok ? `the restore failed on the destination: ${reported.error}` : 'the destination did not restore';
          throw new Error(`Incus' post-dump step failed (${incusStatus}): ${why}, and the source resumes`);
        }
        const late = sleep(RESTORE_REPORT_MS).then(() => new Error(`no report within ${RESTORE_REPORT_MS / 1000} s of Incus'`));
        const reported = await Promise.race([report.catch((error: Error) => error), late]);
        if (!(reported instanceof Error) && !reported.result.ok) {
          throw new Error(`Incus reported the restore as a success, but it failed on the destination (${reported.result.error}); Incus 6.0.4 then lets incus move delete the source: the destination keeps a stopped copy with the disk`);
        }
        if (reported instanceof Error) {
          context.log(`${record.instance}: haul's destination did not confirm the restore (${reported.message}); Incus says it succeeded`, 'warning');
          return {};
        }
        return { restoredPid: reported.result.pid, restoredAt: reported.at };
      },
      // CRIU's dump fails with its page server gone, and Incus resumes the container
      resumeSource: async () => {},
    });
    migration.finish();
    const downtimeMs = run.restoredAt === undefined ? undefined : run.restoredAt - startedAt.getTime();
    await context.records.add({ ...record, pages: run.pages, bytes: run.pages * PAGE_SIZE, checkpointPageFiles, totalMs: Date.now() - startedAt.getTime(), ...(downtimeMs === undefined ? {} : { downtimeMs }), result: 'moved' });
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
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
