import { join } from 'node:path';
import { criuLogErrors, RestoredTree, PAGE_SIZE } from '../src/criu/index.js';
import { hasEnded, identify, type ProcessIdentity } from '../src/host/index.js';
import { discardImages, type RestoreOutcome } from '../proxy/index.js';
import type { DestinationContext, Incoming } from './destination-context.js';
import { PAGES_WAIT_MS } from './destination-context.js';
import { afterFailedArrival, cutIncusMigration } from './failed-restore.js';
import { argumentOf } from './hook-protocol.js';
import { connectionFilters } from './incus-connections.js';
import type { MigrationRecord } from './migration-records.js';
import { RestoreLogGate } from './restore-log-gate.js';
import type { RestoreWatch } from './restore-watch.js';

/** After a restore that worked: how long CRIU may take to end before Incus reads its log anyway. */
const CRIU_END_MS = 30_000;

/** A restore haul follows: CRIU's process (the hook's, which execs it) and the gate on its log. */
export interface WatchedRestore {
  readonly watch: RestoreWatch;
  readonly criuPid: number;
  readonly criu: ProcessIdentity | undefined;
  readonly timeoutMs: number;
  /** Where CRIU writes its log, and what holds Incus back from it; unset when liblxc named no log. */
  readonly log?: { readonly path: string; readonly gate: RestoreLogGate };
}

export type DestinationRecord = Omit<MigrationRecord, 'pages' | 'bytes' | 'totalMs' | 'result'>;

/**
 * CRIU's log goes into the migration's directory here, and the name liblxc gave it becomes a gate
 * that holds incusd until haul knows how the restore went (see RestoreLogGate). Without one (no
 * `-o`, or the gate could not be made) the restore runs as it is, unguarded, and the log says so.
 */
export async function gateRestoreLog(context: DestinationContext, entry: Incoming, args: readonly string[], timeoutMs: number, criuPid: number): Promise<WatchedRestore['log']> {
  const incusLog = argumentOf(args, '-o');
  if (!incusLog?.startsWith('/')) {
    context.log(`${entry.instance}: the restore names no log by its full path (-o ${incusLog ?? ''}): Incus is not held back on a failed restore`, 'warning');
    return undefined;
  }
  const path = join(entry.dir, 'restore.log');
  try {
    // if this agent dies before it has a word for the gate, the keeper contains the restore
    // itself: Incus' migration connections are all up by now (the restore comes last)
    const cutFilters = await context.incus.server().then(({ pid }) => connectionFilters(pid, entry.sourceManagerAddresses)).catch(() => []);
    const criu = identify(criuPid);
    return { path, gate: await RestoreLogGate.open(incusLog, path, PAGES_WAIT_MS + timeoutMs + 60_000, { cutFilters, ...(criu ? { criu } : {}) }) };
  } catch (error) {
    context.log(`${entry.instance}: Incus is not held back on a failed restore: ${error instanceof Error ? error.message : String(error)}`, 'warning');
    return undefined;
  }
}

/**
 * Follows the restore to its end and tells the source how it went, which is what the source ends
 * or resumes its copy on (with Incus' own report). Records the migration.
 */
export async function followRestore(context: DestinationContext, entry: Incoming, record: DestinationRecord, eager: number, watched: WatchedRestore | undefined, lazy: Promise<number> | undefined): Promise<void> {
  try {
    await restoreToItsEnd(context, entry, record, eager, watched, lazy);
  } finally {
    watched?.log?.gate.abandonUnlessPending(); // an error on the way: the keeper contains it, Incus does not wait for good
    context.inFlight.end(record.id);
    await discardImages(entry.dir);
  }
}

async function restoreToItsEnd(context: DestinationContext, entry: Incoming, record: DestinationRecord, eager: number, watched: WatchedRestore | undefined, lazy: Promise<number> | undefined): Promise<void> {
  context.inFlight.update(entry.progress, { phase: 'restoring', pages: eager });
  let outcome: RestoreOutcome = watched ? await watched.watch.outcome(watched.criuPid, watched.timeoutMs) : { ok: true, pid: 0 };
  if (!outcome.ok && watched?.log) {
    await hasEnded(watched.criu, 20, 2000); // the log is whole once CRIU is gone
    const errors = (await criuLogErrors(watched.log.path)).slice(-3);
    outcome = { ok: false, error: `${outcome.error}; ${watched.log.path}${errors.length ? ` says: ${errors.join(' | ')}` : ''}` };
  }
  if (lazy && outcome.ok && outcome.pid > 0) {
    // it runs on pages still at the source (pre-copy has them all here, and is left to Incus)
    entry.restored = RestoredTree.ofRoot(outcome.pid);
    entry.guard?.matchLink(); // the link may have gone down meanwhile
  }
  await entry.migration.reportRestore(outcome).catch(() => {});
  if (watched?.log) {
    const { gate } = watched.log;
    if (outcome.ok) {
      gate.restored(); // nothing to contain any more, whatever happens to this agent
      gate.releaseWhen(hasEnded(watched.criu, 10, CRIU_END_MS)); // Incus copies the whole log
    } else {
      await cutIncusMigration(context, entry);
      gate.release();
    }
  }
  let pages = eager;
  let failure = outcome.ok ? undefined : `the restore failed: ${outcome.error}`;
  if (failure && lazy && entry.session.isOpen) entry.session.abort(failure); // ends the lazy-pages daemon too
  if (!failure && lazy) {
    const lazyPages = entry.lazyPages;
    context.inFlight.update(entry.progress, { phase: 'restored; its memory arriving' });
    const counting = setInterval(() => context.inFlight.update(entry.progress, { pages: eager + lazyPages.received }), 500);
    void lazy.finally(() => clearInterval(counting)).catch(() => {});
    try {
      pages += await lazy;
      context.log(`${entry.instance}: every lazy page arrived (${pages - eager})`);
    } catch (error) {
      failure = `lazy pages could not all be delivered: ${error instanceof Error ? error.message : String(error)}`;
    }
  }
  entry.migration.end();
  const totalMs = Date.now() - entry.startedAt.getTime();
  if (failure) {
    context.log(`${entry.instance}: migration ${record.id} failed: ${failure}`, 'error');
    if (!outcome.ok) afterFailedArrival(context, entry.instance);
    await context.records.add({ ...record, pages, bytes: pages * PAGE_SIZE, totalMs, result: 'failed', error: failure });
    return;
  }
  context.log(`${entry.instance}: migration ${record.id} restored (init pid ${outcome.ok ? outcome.pid : 0})`);
  await context.records.add({ ...record, pages, bytes: pages * PAGE_SIZE, totalMs, result: 'restored' });
}
