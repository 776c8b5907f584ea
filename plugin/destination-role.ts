import { createReadStream, mkdirSync } from 'node:fs';
import { chmod, chown, lstat, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { LinkSession } from '../src/link/index.js';
import { pagesStoredIn, criuLogErrors, RestoredTree, type CriuVersion, PAGE_SIZE } from '../src/criu/index.js';
import { parseMode, type Mode, DestinationMigration, DISK_CHANGES_FILE, discardImages, applyDiskChanges, type LazyCopyGuard, type LazyPageStore, type RestoreOutcome } from '../proxy/index.js';
import { ownerIdsOf } from './instance-idmap.js';
import { instanceRestoredBy } from './restore-caller.js';
import { BadNameError, migrationId } from '../src/name-grammars.js';
import { instanceName } from './instance-name.js';
import { MIGRATION_ID_FILE, argumentOf, type HookReply } from './hook-protocol.js';
import { instanceNameOf, type IncusClient } from './incus-client.js';
import type { IncusEvent } from './incus-events.js';
import type { InFlight, MigrationProgress } from './in-flight.js';
import type { MigrationRecord, MigrationRecords } from './migration-records.js';
import { repairFailedArrival } from './arrival-repair.js';
import { RestoreWatch } from './restore-watch.js';
import { RestoreLogGate } from './restore-log-gate.js';
import { placeImageFiles, readPlainFile } from './restore-dir-files.js';
import { connectionFilters, cutConnections, cuttableEndpoints } from './incus-connections.js';
import { restoreTimeoutFor } from './peer-limits.js';
import { hasEnded, identify, type ProcessIdentity } from '../src/host/index.js';

/** How long an instance counts as being received after its "Creating instance" operation was seen. */
const EXPECTED_FOR_MS = 10 * 60_000;
const EXPECT_WAIT_MS = 5_000;
const PAGES_WAIT_MS = 5 * 60_000;
/** After a failed restore: how long incusd here gets to see its cut connections fail. */
const CUT_SETTLE_MS = 500;
/** After a restore that worked: how long CRIU may take to end before Incus reads its log anyway. */
const CRIU_END_MS = 30_000;

/** A restore haul follows: CRIU's process (the hook's, which execs it) and the gate on its log. */
interface WatchedRestore {
  readonly watch: RestoreWatch;
  readonly criuPid: number;
  readonly criu: ProcessIdentity | undefined;
  readonly timeoutMs: number;
  /** Where CRIU writes its log, and what holds Incus back from it; unset when liblxc named no log. */
  readonly log?: { readonly path: string; readonly gate: RestoreLogGate };
}

interface Incoming {
  readonly mode: Mode;
  readonly session: LinkSession;
  /** What the source sends, stored here, and what this host says back. */
  readonly migration: DestinationMigration;
  readonly lazyPages: Promise<LazyPageStore>;
  readonly instance: string;
  readonly peer: string;
  readonly dir: string;
  readonly startedAt: Date;
  readonly complete: Promise<void>;
  readonly progress: MigrationProgress;
  /**
   * How long the restore may run: the instance's user.haul.restore-timeout as the source read it,
   * at most this agent's own (restoreTimeoutFor). (Asking incusd here would cost 5 s: during an
   * incoming move it answers for the instance only after its "monitor is unresponsive" timeout.)
   */
  readonly restoreTimeoutMs: number;
  /**
   * Where the source's incusd listens for its peers (IP:port), as far as this host cuts them: Incus'
   * own migration connects there. Only addresses of the host the link came from (cuttableEndpoints).
   */
  readonly sourceManagerAddresses: readonly string[];
  /** Lazy: the restored container's processes, once CRIU reported them (they run on pages still arriving). */
  restored?: RestoredTree;
  /** Lazy: holds `restored` in step with the link until every page is here. */
  guard?: LazyCopyGuard;
}

/**
 * The agent's destination side: takes the pages of an instance this host's incusd is receiving
 * (and only those) into a directory of its own as they arrive, restore-ready, and when liblxc runs
 * `criu restore` for it, places them into Incus' restore directory, readable by the container's
 * root, before CRIU starts.
 */
export class DestinationRole {
  private readonly expected = new Map<string, number>(); // instance name -> when its creation was seen
  private readonly incoming = new Map<string, Incoming>(); // by migration id
  private readonly arrivals: Array<() => void> = [];
  private sessions = 0;

  constructor(
    private readonly incus: IncusClient,
    private readonly cacheDir: string,
    private readonly records: MigrationRecords,
    private readonly log: (line: string) => void,
    private readonly criuVersion: () => Promise<CriuVersion>,
    private readonly criuBinary: string | undefined,
    /** How long a restore may run before haul kills it (Incus has no limit); per instance: user.haul.restore-timeout. */
    private readonly restoreTimeoutMs: number,
    private readonly inFlight: InFlight,
  ) {
    mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
  }

  /** Incus operation events: a "Creating instance" operation is an incoming migration (or a create). */
  onEvent(event: IncusEvent): void {
    if (event.type !== 'operation' || event.metadata.description !== 'Creating instance') return;
    for (const path of event.metadata.resources?.instances ?? []) this.expected.set(instanceNameOf(path), Date.now());
  }

  private async isReceiving(instance: string): Promise<boolean> {
    const deadline = Date.now() + EXPECT_WAIT_MS;
    for (;;) {
      const seen = this.expected.get(instance);
      if (seen !== undefined && Date.now() - seen < EXPECTED_FOR_MS) return true;
      // events can be missed (a listener that falls behind is dropped): ask for the operations too
      if (await this.incus.isCreating(instance)) return true;
      if (Date.now() > deadline) return false;
      await sleep(200);
    }
  }

  /** A session from a peer's source role; `peerAddress`: the remote address of the connection it came over. */
  serve(session: LinkSession, peerAddress: string | undefined): void {
    const dir = join(this.cacheDir, `${Date.now()}-${++this.sessions}`);
    // before any await: the source's channels are announced at once
    const migration = DestinationMigration.begin(session, dir);
    const { store, lazyPages } = migration;
    void (async () => {
      let start;
      try {
        start = await migration.start();
      } catch {
        // a peer that only checked it could link here (haul doctor), or went away before starting
        await migration.forget();
        return;
      }
      const peer = start.source_host || 'unnamed peer';
      const turnDown = (reason: string): Promise<void> => migration.refuse(reason);
      let instance: string;
      let id: string;
      try {
        // the peer's words, which become paths (restore-<id>) and Incus API calls
        instance = instanceName(start.instance);
        id = migrationId(start.migration_id);
      } catch (error) {
        if (!(error instanceof BadNameError)) throw error;
        this.log(`a migration from ${peer} refused: ${error.message}`);
        return turnDown(`${error.code}: ${error.message}`);
      }
      if (!(await this.isReceiving(instance))) return turnDown(`this host is not receiving an instance named ${JSON.stringify(instance)}`);
      const mode = parseMode(start.mode);
      if (!mode) return turnDown(`this host does not know the migration mode ${JSON.stringify(start.mode)}`);
      const startedAt = new Date();
      const progress = this.inFlight.start({ id, instance, role: 'destination', peer, mode, phase: 'receiving pages', pages: 0, startedAt: startedAt.toISOString() });
      const counting = setInterval(() => this.inFlight.update(progress, { pages: store.pagesStored }), 500);
      const stopCounting = (): void => {
        clearInterval(counting);
        this.inFlight.update(progress, { pages: store.pagesStored });
      };
      void store.complete.then(stopCounting, () => {
        stopCounting();
        this.inFlight.end(id);
      });
      const restoreTimeoutMs = restoreTimeoutFor(start.restore_timeout_ms, this.restoreTimeoutMs);
      if (restoreTimeoutMs < start.restore_timeout_ms) this.log(`${instance}: ${peer} asks for a restore timeout of ${start.restore_timeout_ms / 1000} s; this host allows at most ${this.restoreTimeoutMs / 1000} s (--restore-timeout)`);
      const manager = cuttableEndpoints(start.manager_addresses, peerAddress);
      if (manager.ignored.length) this.log(`${instance}: ignored incusd addresses from ${peer} that are not IP addresses of the link's peer (${peerAddress ?? 'unknown'}) or past the first few: ${manager.ignored.slice(0, 8).join(', ')}`);
      this.incoming.set(id, { mode, session, migration, lazyPages, instance, peer, dir, startedAt, complete: store.complete, progress, restoreTimeoutMs, sourceManagerAddresses: manager.endpoints });
      // the source gave up before the restore came: nothing is in progress here any more
      session.once('aborted', () => {
        if (!this.incoming.has(id)) return;
        this.inFlight.end(id);
        discardImages(dir).catch((error: Error) => this.log(`${instance}: the pages of migration ${id} could not be discarded: ${error.message}`));
        // kept a while, so that a restore Incus still starts fails at once, saying why, instead of
        // waiting for pages that will not come; then forgotten
        setTimeout(() => this.incoming.get(id)?.session === session && this.incoming.delete(id), PAGES_WAIT_MS).unref();
      });
      this.arrivals.splice(0).forEach((wake) => wake());
      await migration.accept();
      try {
        await store.complete;
        await migration.reportStored();
        this.log(`${instance}: pages of migration ${id} stored, waiting for the restore`);
        this.inFlight.update(progress, { phase: 'pages stored; waiting for Incus to restore' });
      } catch (error) {
        const reason = error instanceof Error ? error.message : String(error);
        if (session.isOpen) await migration.reportStored(reason).catch(() => {});
        throw error;
      }
    })().catch((error: Error) => this.log(`an incoming migration failed: ${error.message}`));
  }

  /** `callerPid`: the hook's process, in the mount namespace the restore runs in (liblxc's own). */
  async restore(args: readonly string[], callerPid?: number): Promise<HookReply> {
    const dir = argumentOf(args, '-D');
    if (!dir) return { args };
    let id: string;
    try {
      // it came with Incus' rsync from the source: not through a link, and only a migration id
      const text = await readPlainFile(join(dir, MIGRATION_ID_FILE));
      if (text === undefined) return { args }; // a native move: nothing of haul's in it
      id = migrationId((JSON.parse(text) as { id?: unknown }).id);
    } catch (error) {
      const code = error instanceof Error && 'code' in error ? ` (${String(error.code)})` : '';
      const why = error instanceof SyntaxError ? `is not JSON (${error.message})` : `is not haul's${code}: ${error instanceof Error ? error.message : String(error)}`;
      const reason = `haul: refused the restore in ${dir}: its ${MIGRATION_ID_FILE} ${why}`;
      this.log(reason);
      return { error: reason };
    }
    // Incus made the restore dir 0700 for the container's root; CRIU 4.1.1's restored init may open
    // timens-N.img before its uid map is written (criu/cr-restore.c: prepare_timens() runs before
    // the PREPARE_NAMESPACES stage), as host uid 0 and gid 0 without capabilities here, and then
    // cannot search it: about one native move in six fails so here. Searchable by group 0 (root's),
    // and by no other user: the pages placed in it are the container's memory.
    const restoreDir = await lstat(dir);
    if (!restoreDir.isDirectory()) return { error: `haul: the restore dir ${dir} is not a directory` };
    await chown(dir, restoreDir.uid, 0);
    await chmod(dir, 0o710);
    const containerRoot = { uid: restoreDir.uid, gid: 0 };
    const started = Date.now();
    const deadline = started + PAGES_WAIT_MS;
    let entry = this.incoming.get(id);
    while (!entry && Date.now() < deadline) {
      await Promise.race([new Promise<void>((resolve) => this.arrivals.push(resolve)), sleep(1000)]);
      entry = this.incoming.get(id);
    }
    if (!entry) return { error: `haul: the pages of migration ${id} never arrived on this host` };
    const timeoutMs = entry.restoreTimeoutMs;
    // both start helper processes: while the pages are placed, not inside the downtime after that
    const watching = callerPid === undefined ? Promise.resolve(undefined) : RestoreWatch.create(join(this.cacheDir, `restore-${id}`));
    const gating = callerPid === undefined ? Promise.resolve(undefined) : this.gateRestoreLog(entry, args, timeoutMs, callerPid);
    watching.catch(() => {});
    const record = { id, instance: entry.instance, role: 'destination' as const, peer: entry.peer, mode: entry.mode, startedAt: entry.startedAt.toISOString() };
    // contain first (Incus' migration cut, incusd let go), record after: a record that cannot be
    // written must not leave incusd waiting, or free to report the failure as a success
    const refuse = async (failed: Incoming, reason: string): Promise<HookReply> => {
      await this.cutIncusMigration(failed); // the hook fails the restore once this returns
      (await gating.catch(() => undefined))?.gate.release();
      await (await watching.catch(() => undefined))?.discard().catch(() => {});
      this.afterFailedArrival(failed.instance);
      this.inFlight.end(id);
      await discardImages(failed.dir).catch(() => {});
      await this.records.add({ ...record, pages: 0, bytes: 0, totalMs: Date.now() - failed.startedAt.getTime(), result: 'failed', error: reason });
      return { error: reason };
    };
    try {
      try {
        await Promise.race([entry.complete, sleep(Math.max(0, deadline - Date.now())).then(() => Promise.reject(new Error(`not complete after ${PAGES_WAIT_MS / 1000} s`)))]);
        // the restored tasks read these themselves, as the container's root: world-readable
        await placeImageFiles(entry.dir, dir, (await readdir(entry.dir)).filter((n) => /^(pagemap|pages)-.*\.img$/.test(n)), containerRoot);
        await this.bringDiskUpToDate(entry, args, callerPid);
      } catch (error) {
        return refuse(entry, `haul: the pages or disk changes of migration ${id} are not usable: ${error instanceof Error ? error.message : String(error)}`);
      }
      this.incoming.delete(id);
      const eager = await pagesStoredIn(entry.dir);
      let lazy: Promise<number> | undefined;
      if (entry.mode === 'pre-copy') {
        await (await entry.lazyPages).close(); // unused in pre-copy
      } else {
        try {
          lazy = (await this.serveLazy(entry, dir)).delivered;
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
      this.reportRestore(entry, record, eager, watch && criuPid ? { watch, criuPid, criu: identify(criuPid), timeoutMs, ...(log ? { log } : {}) } : undefined, lazy)
        .catch((error: Error) => this.log(`${entry.instance}: following the restore of migration ${id} failed: ${error.message}`));
      this.log(`${entry.instance}: pages of migration ${id} placed; restoring${lazy ? ' lazily, the memory following through haul' : ''}`);
      return { args: [...restoreArgs, ...(lazy ? ['--lazy-pages'] : []), ...(watch ? ['--action-script', watch.scriptPath] : [])] };
    } catch (error) {
      // whatever went wrong, Incus is held at the gate: it must see the move fail, and go on
      return refuse(entry, `haul: the restore of migration ${id} could not be prepared: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  /**
   * CRIU's log goes into the migration's directory here, and the name liblxc gave it becomes a gate
   * that holds incusd until haul knows how the restore went (see RestoreLogGate). Without one (no
   * `-o`, or the gate could not be made) the restore runs as it is, unguarded, and the log says so.
   */
  private async gateRestoreLog(entry: Incoming, args: readonly string[], timeoutMs: number, criuPid: number): Promise<WatchedRestore['log']> {
    const incusLog = argumentOf(args, '-o');
    if (!incusLog?.startsWith('/')) {
      this.log(`${entry.instance}: the restore names no log by its full path (-o ${incusLog ?? ''}): Incus is not held back on a failed restore`);
      return undefined;
    }
    const path = join(entry.dir, 'restore.log');
    try {
      // if this agent dies before it has a word for the gate, the keeper contains the restore
      // itself: Incus' migration connections are all up by now (the restore comes last)
      const cutFilters = await this.incus.server().then(({ pid }) => connectionFilters(pid, entry.sourceManagerAddresses)).catch(() => []);
      const criu = identify(criuPid);
      return { path, gate: await RestoreLogGate.open(incusLog, path, PAGES_WAIT_MS + timeoutMs + 60_000, { cutFilters, ...(criu ? { criu } : {}) }) };
    } catch (error) {
      this.log(`${entry.instance}: Incus is not held back on a failed restore: ${error instanceof Error ? error.message : String(error)}`);
      return undefined;
    }
  }

  /**
   * Follows the restore to its end and tells the source how it went, which is what the source ends
   * or resumes its copy on (with Incus' own report). Records the migration.
   */
  private async reportRestore(entry: Incoming, record: Omit<MigrationRecord, 'pages' | 'bytes' | 'totalMs' | 'result'>, eager: number, watched: WatchedRestore | undefined, lazy: Promise<number> | undefined): Promise<void> {
    try {
      await this.followRestore(entry, record, eager, watched, lazy);
    } finally {
      watched?.log?.gate.abandonUnlessPending(); // an error on the way: the keeper contains it, Incus does not wait for good
      this.inFlight.end(record.id);
      await discardImages(entry.dir);
    }
  }

  private async followRestore(entry: Incoming, record: Omit<MigrationRecord, 'pages' | 'bytes' | 'totalMs' | 'result'>, eager: number, watched: WatchedRestore | undefined, lazy: Promise<number> | undefined): Promise<void> {
    this.inFlight.update(entry.progress, { phase: 'restoring', pages: eager });
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
        await this.cutIncusMigration(entry);
        gate.release();
      }
    }
    let pages = eager;
    let failure = outcome.ok ? undefined : `the restore failed: ${outcome.error}`;
    if (failure && lazy && entry.session.isOpen) entry.session.abort(failure); // ends the lazy-pages daemon too
    if (!failure && lazy) {
      const lazyPages = await entry.lazyPages;
      this.inFlight.update(entry.progress, { phase: 'restored; its memory arriving' });
      const counting = setInterval(() => this.inFlight.update(entry.progress, { pages: eager + lazyPages.received }), 500);
      void lazy.finally(() => clearInterval(counting)).catch(() => {});
      try {
        pages += await lazy;
        this.log(`${entry.instance}: every lazy page arrived (${pages - eager})`);
      } catch (error) {
        failure = `lazy pages could not all be delivered: ${error instanceof Error ? error.message : String(error)}`;
      }
    }
    entry.migration.end();
    const totalMs = Date.now() - entry.startedAt.getTime();
    if (failure) {
      this.log(`${entry.instance}: migration ${record.id} failed: ${failure}`);
      if (!outcome.ok) this.afterFailedArrival(entry.instance);
      await this.records.add({ ...record, pages, bytes: pages * PAGE_SIZE, totalMs, result: 'failed', error: failure });
      return;
    }
    this.log(`${entry.instance}: migration ${record.id} restored (init pid ${outcome.ok ? outcome.pid : 0})`);
    await this.records.add({ ...record, pages, bytes: pages * PAGE_SIZE, totalMs, result: 'restored' });
  }

  /**
   * A failed restore, with incusd here held at CRIU's log: Incus' migration must fail before incusd
   * goes on, or it may report the failure as a success (RestoreLogGate) and `incus move` delete the
   * source. Its migration fails when its connections to the source's incusd do: both ends see the
   * migration fail (Incus' source resumes the container), and the move reports the error.
   * Cancelling the source's operation instead would not do: the client takes a cancelled source
   * operation for a finished one, and deletes the source. Every migration between these two
   * incusd is cut: any other one under way fails too, as a native move's would.
   */
  private async cutIncusMigration(entry: Incoming): Promise<void> {
    try {
      if (entry.sourceManagerAddresses.length === 0) throw new Error("the source named no IP address of its own where its incusd listens");
      const { pid } = await this.incus.server();
      const cut = await cutConnections(pid, entry.sourceManagerAddresses);
      if (cut.length === 0) throw new Error(`incusd here holds no connection to the source's incusd at ${entry.sourceManagerAddresses.join(', ')}`);
      this.log(`${entry.instance}: the restore failed; ${cut.length} connections of incusd here to the source's incusd (${entry.sourceManagerAddresses.join(', ')}) cut, so that Incus fails the move rather than report it as a success`);
      await sleep(CUT_SETTLE_MS);
    } catch (error) {
      this.log(`${entry.instance}: the restore failed, and Incus' migration could not be cut short (${error instanceof Error ? error.message : String(error)}); Incus may report the failed restore as a success`);
    }
  }

  /** Once Incus is done failing the move, undoes what it left behind here (see repairFailedArrival). */
  private afterFailedArrival(instance: string): void {
    void repairFailedArrival(this.incus, instance).then(
      (what) => this.log(`${instance}: after the failed move: ${what}`),
      (error: Error) => this.log(`${instance}: after the failed move, could not repair what Incus left: ${error.message}`),
    );
  }

  /**
   * Where the source sent its root filesystem's changes since Incus' snapshot (btrfs and zfs
   * pools), writes them into the root the restore is about to use, as liblxc mounted it for the
   * restore (seen through the hook's own mount namespace).
   */
  private async bringDiskUpToDate(entry: Incoming, args: readonly string[], callerPid: number | undefined): Promise<void> {
    const changes = join(entry.dir, DISK_CHANGES_FILE);
    if (!(await stat(changes).catch(() => undefined))) return;
    const root = argumentOf(args, '--root');
    if (!root || !callerPid) throw new Error('the restore names no root filesystem to write the disk changes into');
    // the peer named the instance; the owners allowed come from the one this restore really is
    const restoring = await instanceRestoredBy(callerPid, (await this.incus.server()).pid);
    if (restoring !== entry.instance) throw new Error(`the restore is of ${restoring === undefined ? 'no instance incusd started (its CRIU is not a child of incusd forkmigrate)' : `instance ${restoring}`}, and the disk changes are for ${entry.instance}`);
    const instance = await this.incus.instance(entry.instance);
    if (!instance) throw new Error(`incusd here knows no instance ${entry.instance} to write the disk changes for`);
    // the container wrote these files: they may be owned only by ids its own root could give them
    const owners = ownerIdsOf(instance);
    const applied = await applyDiskChanges(createReadStream(changes), `/proc/${callerPid}/root${root}`, owners ? { owners } : {});
    this.log(`${entry.instance}: disk brought up to the frozen source: ${applied.files} files (${applied.bytes} bytes), ${applied.symlinks} symlinks, ${applied.directories} directories, ${applied.removed} removed`);
  }

  /**
   * Starts `criu lazy-pages` for a lazy restore in `dir`, served by haul from the link. Resolves
   * once it listens; `delivered` settles when the daemon has delivered every page (their count: the
   * source has then heard that the migration is complete). If the link fails first, the daemon is
   * ended.
   */
  private async serveLazy(entry: Incoming, dir: string): Promise<{ readonly delivered: Promise<number> }> {
    const lazyPages = await entry.lazyPages;
    // Incus shows a container the guard ended as stopped
    const service = await entry.migration.serveLazy({ restoreDir: dir, ...(this.criuBinary ? { criuBinary: this.criuBinary } : {}), criuVersion: await this.criuVersion(), restored: () => entry.restored });
    const { guard } = service;
    entry.guard = guard;
    const delivered = (async () => {
      try {
        await service.delivered();
        await guard.release();
        await entry.restored?.resume(); // every page is here: whatever the link does, it runs
        await entry.migration.reportLazyComplete(lazyPages.received);
        return lazyPages.received;
      } catch (error) {
        const reason = error instanceof Error ? error.message : String(error);
        if (entry.session.isOpen) entry.session.abort(`lazy pages could not all be delivered: ${reason}`);
        throw error;
      } finally {
        await lazyPages.close().catch(() => {});
      }
    })();
    delivered.catch(() => {});
    return { delivered }; // wrapped: a promise returned from an async function would be awaited
  }
}
