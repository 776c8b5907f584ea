import { mkdirSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { LinkSession } from '../src/link/index.js';
import { pagesStoredIn } from '../src/criu/index.js';
import { identify } from '../src/host/index.js';
import { discardImages } from '../proxy/index.js';
import { migrationId } from '../src/name-grammars.js';
import { MIGRATION_ID_FILE, argumentOf, type HookReply } from './hook-protocol.js';
import type { IncusClient } from './incus-client.js';
import type { IncusEvent } from './incus-events.js';
import type { InFlight } from './in-flight.js';
import type { MigrationRecords } from './migration-records.js';
import { PAGES_WAIT_MS, type DestinationContext, type Incoming } from './destination-context.js';
import { IncomingMigrations } from './incoming-migrations.js';
import { bringDiskUpToDate } from './destination-disk.js';
import { afterFailedArrival, cutIncusMigration } from './failed-restore.js';
import { serveLazyRestore } from './lazy-restore-pages.js';
import { followRestore, gateRestoreLog } from './restore-follow.js';
import { RestoreWatch } from './restore-watch.js';
import { makeSearchableByRoot, netnsImagesForEveryCriu, placeImageFiles, readPlainFile } from './restore-dir-files.js';
import type { AgentLog } from './agent-log.js';

/**
 * The agent's destination side: takes the pages of an instance this host's incusd is receiving
 * (and only those) into a directory of its own as they arrive, restore-ready (IncomingMigrations),
 * and when liblxc runs `criu restore` for it, places them into Incus' restore directory, readable
 * by the container's root, before CRIU starts; then follows the restore (restore-follow.ts),
 * contains a failed one (failed-restore.ts), and in lazy mode serves its pages
 * (lazy-restore-pages.ts).
 */
export class DestinationRole {
  private readonly context: DestinationContext;
  private readonly incoming: IncomingMigrations;

  constructor(
    incus: IncusClient,
    private readonly cacheDir: string,
    records: MigrationRecords,
    log: AgentLog,
    criuBinary: string | undefined,
    /** How long a restore may run before haul kills it (Incus has no limit); per instance: user.haul.restore-timeout. */
    restoreTimeoutMs: number,
    inFlight: InFlight,
  ) {
    mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
    this.context = { incus, cacheDir, records, log, criuBinary, inFlight };
    this.incoming = new IncomingMigrations(this.context, restoreTimeoutMs);
  }

  /** Incus operation events: a "Creating instance" operation is an incoming migration (or a create). */
  onEvent(event: IncusEvent): void {
    this.incoming.onEvent(event);
  }

  /** A session from a peer's source role; `peerAddress`: the remote address of the connection it came over. */
  serve(session: LinkSession, peerAddress: string | undefined): void {
    this.incoming.serve(session, peerAddress);
  }

  /** `callerPid`: the hook's process, in the mount namespace the restore runs in (liblxc's own). */
  async restore(args: readonly string[], callerPid?: number): Promise<HookReply> {
    const dir = argumentOf(args, '-D');
    if (!dir) return { args, note: 'criu restore without -D: run unchanged' };
    // every restore, haul's or not: see makeSearchableByRoot
    // (before CRIU runs, so awaited here; a failure fails only a restore of haul's, below)
    const restoreDir = await makeSearchableByRoot(dir).then((owner) => owner ?? new Error('it is not a directory'), (error: Error) => error);
    let id: string;
    try {
      // it came with Incus' rsync from the source: not through a link, and only a migration id
      const text = await readPlainFile(join(dir, MIGRATION_ID_FILE));
      if (text === undefined) return { args, note: `criu restore from ${dir}: nothing of haul's in it (a stateful start or a native move), run unchanged` };
      id = migrationId((JSON.parse(text) as { id?: unknown }).id);
    } catch (error) {
      const code = error instanceof Error && 'code' in error ? ` (${String(error.code)})` : '';
      const why = error instanceof SyntaxError ? `is not JSON (${error.message})` : `is not haul's${code}: ${error instanceof Error ? error.message : String(error)}`;
      const reason = `haul: refused the restore in ${dir}: its ${MIGRATION_ID_FILE} ${why}`;
      return { error: reason }; // the agent logs it
    }
    if (restoreDir instanceof Error) return { error: `haul: the restore dir ${dir} cannot be used: ${restoreDir.message}` };
    const containerRoot = { uid: restoreDir.uid, gid: 0 };
    const started = Date.now();
    const deadline = started + PAGES_WAIT_MS;
    const entry = await this.incoming.arrival(id, deadline);
    if (!entry) return { error: `haul: the pages of migration ${id} never arrived on this host` };
    const timeoutMs = entry.restoreTimeoutMs;
    // both start helper processes: while the pages are placed, not inside the downtime after that
    const watching = callerPid === undefined ? Promise.resolve(undefined) : RestoreWatch.create(join(this.cacheDir, `restore-${id}`));
    const gating = callerPid === undefined ? Promise.resolve(undefined) : gateRestoreLog(this.context, entry, args, timeoutMs, callerPid);
    watching.catch(() => {});
    const record = { id, instance: entry.instance, role: 'destination' as const, peer: entry.peer, mode: entry.mode, startedAt: entry.startedAt.toISOString() };
    // lazy: criu lazy-pages starts while the pages are placed and the disk brought up (it reads
    // only the process tree's image, from Incus' own copy, until a restore connects): started after
    // them, its start (CRIU's probes of the kernel) was some 40 ms of the container's downtime
    const lazyStart = entry.mode === 'lazy' && entry.session.isOpen ? serveLazyRestore(entry, dir) : undefined;
    lazyStart?.catch(() => {}); // awaited below, where a failure refuses the restore
    // contain first (Incus' migration cut, incusd let go), record after: a record that cannot be
    // written must not leave incusd waiting, or free to report the failure as a success
    const refuse = async (failed: Incoming, reason: string): Promise<HookReply> => {
      // no restore will connect to the lazy-pages daemon: it would wait for one for good (ended
      // once it has started, without holding up the cut)
      void lazyStart?.then((started) => started.stop()).catch(() => {});
      await cutIncusMigration(this.context, failed); // the hook fails the restore once this returns
      (await gating.catch(() => undefined))?.gate.release();
      await (await watching.catch(() => undefined))?.discard().catch(() => {});
      afterFailedArrival(this.context, failed.instance);
      this.context.inFlight.end(id);
      await discardImages(failed.dir).catch(() => {});
      await this.context.records.add({ ...record, pages: 0, bytes: 0, totalMs: Date.now() - failed.startedAt.getTime(), result: 'failed', error: reason });
      return { error: reason };
    };
    try {
      try {
        await Promise.race([entry.complete, sleep(Math.max(0, deadline - Date.now())).then(() => Promise.reject(new Error(`not complete after ${PAGES_WAIT_MS / 1000} s`)))]);
        // the restored tasks read these themselves, as the container's root: world-readable
        await placeImageFiles(entry.dir, dir, (await readdir(entry.dir)).filter((n) => /^(pagemap|pages)-.*\.img$/.test(n)), containerRoot);
        // the container's network namespace, from a source's CRIU 4.2, in a form this host's CRIU 4.1 restores too
        await netnsImagesForEveryCriu(dir);
        await bringDiskUpToDate(this.context, entry, args, callerPid);
      } catch (error) {
        return refuse(entry, `haul: the pages or disk changes of migration ${id} are not usable: ${error instanceof Error ? error.message : String(error)}`);
      }
      this.incoming.take(id);
      const eager = await pagesStoredIn(entry.dir);
      let lazy: Promise<number> | undefined;
      if (entry.mode === 'pre-copy') {
        await entry.lazyPages.close(); // unused in pre-copy
      } else {
        try {
          if (!lazyStart) throw new Error('the link to the source failed before the restore');
          lazy = (await lazyStart).delivered;
        } catch (error) {
          const reason = `haul: could not start the lazy restore of migration ${id}: ${error instanceof Error ? error.message : String(error)}`;
          if (entry.session.isOpen) entry.session.abort(reason);
          return refuse(entry, reason);
        }
      }
      // the hook asking is the process that becomes CRIU when it execs
      const criuPid = callerPid;
      const watch = await watching;
      const log = await gating;
      const restoreArgs = log ? args.map((arg, at) => (at > 0 && args[at - 1] === '-o' ? log.path : arg)) : args;
      followRestore(this.context, entry, record, eager, watch && criuPid ? { watch, criuPid, criu: identify(criuPid), timeoutMs, ...(log ? { log } : {}) } : undefined, lazy)
        .catch((error: Error) => this.context.log(`${entry.instance}: following the restore of migration ${id} failed: ${error.message}`, 'error'));
      this.context.log(`${entry.instance}: pages of migration ${id} placed; restoring${lazy ? ' lazily, the memory following through haul' : ''}`);
      return { args: [...restoreArgs, ...(lazy ? ['--lazy-pages'] : []), ...(watch ? ['--action-script', watch.scriptPath] : [])] };
    } catch (error) {
      // whatever went wrong, Incus is held at the gate: it must see the move fail, and go on
      return refuse(entry, `haul: the restore of migration ${id} could not be prepared: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

}
