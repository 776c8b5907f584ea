import { randomUUID } from 'node:crypto';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PAGE_SIZE, type HeaderLayout, headerLayoutFor, type CriuVersion, fitsUnixSocketPath, isPagesFileName, lazyRunsIn, pagesStoredIn } from '../src/criu/index.js';
import { dialLink, type EndpointOptions, type LinkSession } from '../src/link/index.js';
import { LazyDump, lazyServerListening, dumpToLink, dumpToLinkLocal, type DumpToLink, SourceMigration, packDiskChanges } from '../proxy/index.js';
import { modeOf } from './haul-mode.js';
import type { InFlight, MigrationProgress } from './in-flight.js';
import { ObservedPostDump } from './observed-post-dump.js';
import { identify, isRunning, type ProcessIdentity } from '../src/host/index.js';
import { LazyEarlyActions } from './lazy-early-actions.js';
import { MIGRATION_ID_FILE, argumentOf, type HookReply } from './hook-protocol.js';
import type { IncusClient, IncusInstance } from './incus-client.js';
import type { HaulMode } from './haul-mode.js';
import type { MigrationRecord, MigrationRecords } from './migration-records.js';

const PEER_ANSWER_MS = 10_000;
const PAGES_STORED_MS = 10 * 60_000;
/** Lazy: how long the push of pages nobody faulted waits for the destination's restore report. */
const PUSH_HOLD_MS = 10_000;
/** How often a lazy dump's CRIU is looked at until post-dump. */
const DUMP_POLL_MS = 250;
/** How long after Incus' post-dump step the destination's own report of the restore may take. */
const RESTORE_REPORT_MS = 30_000;
/** A migration's action scripts are kept this long, then swept when the next one starts. */
const WORK_DIR_KEPT_MS = 60 * 60_000;

/** What the agent knows of the hook's wait for a dump's answer (see HookRequest.answer_within_ms). */
export interface HookCall {
  /** When the agent must have answered (Date.now() time). */
  readonly deadline: number;
  /** Aborted when the hook closed its socket before the answer: it runs CRIU unchanged. */
  readonly gaveUp: AbortSignal;
}

const HOOK_GAVE_UP = "the source's CRIU hook gave up waiting for its agent";
/** A peer is asked only with at least this long left before the hook's deadline. */
const LEAST_OFFER_MS = 1_000;

/** Why no (further) peer may be asked, or undefined while there is time. */
function tooLateToOffer(hook: HookCall): string | undefined {
  if (hook.gaveUp.aborted) return HOOK_GAVE_UP;
  if (hook.deadline - Date.now() < LEAST_OFFER_MS) return "the CRIU hook's wait for an answer is nearly over";
  return undefined;
}

/**
 * `work`, unless the hook's deadline passes or it gives up first (then rejects); what `work`
 * yields too late goes to `discard` (a session nobody will use).
 */
async function withinHookDeadline<T>(work: Promise<T>, hook: HookCall, discard: (late: T) => void = () => {}): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const cutShort = new Promise<never>((_, reject) => {
    if (Number.isFinite(hook.deadline)) timer = setTimeout(() => reject(new Error("no answer before the CRIU hook's wait for one was nearly over")), Math.max(0, hook.deadline - Date.now()));
    onAbort = () => reject(new Error(HOOK_GAVE_UP));
    if (hook.gaveUp.aborted) onAbort();
    else hook.gaveUp.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([work, cutShort]);
  } catch (error) {
    void work.then(discard, () => {});
    throw error;
  } finally {
    clearTimeout(timer);
    hook.gaveUp.removeEventListener('abort', onAbort!);
  }
}

export interface Peer {
  readonly name: string;
  /** wss://HOST:PORT (an agent links over TLS only) */
  readonly url: string;
}

/** The instance's user.haul.restore-timeout (seconds) in ms, 0 when it sets none (or nonsense). */
function restoreTimeoutMs(instance: IncusInstance): number {
  const seconds = Number(instance.expanded_config['user.haul.restore-timeout']);
  return Number.isFinite(seconds) && seconds > 0 ? Math.max(1, Math.round(seconds * 1000)) : 0;
}

/** One migration this agent sends, from the moment its peer accepted it. */
interface Outgoing {
  readonly session: LinkSession;
  /** What is said between the two hosts about this migration. */
  readonly migration: SourceMigration;
  /** Incus' checkpoint directory, the dump's -D as liblxc gives it. */
  readonly dir: string;
  readonly record: Omit<MigrationRecord, 'totalMs' | 'result'>;
  readonly startedAt: Date;
  readonly progress: MigrationProgress;
  /** Set where Incus' own transfer leaves the destination's disk older than the frozen source. */
  readonly disk: DiskCatchUp | undefined;
}

/** The container's root as the agent reaches it, and the time of the snapshot Incus sent. */
interface DiskCatchUp {
  readonly root: string;
  readonly sinceMs: number;
}

/**
 * Pools whose migration sends the root filesystem once, from a snapshot taken before the dump,
 * with no sync after the freeze (Incus 6.0.4 sets MultiSync only for rsync-based transfers).
 */
const SNAPSHOT_ONCE_DRIVERS = new Set(['btrfs', 'zfs']);
/** Margin before the migration operation's start, for the kernel's coarse ctime clock: more is sent, never less. */
const SNAPSHOT_MARGIN_MS = 250;

/**
 * The agent's source side: when liblxc runs the final `criu dump` of an instance that haul moves,
 * finds the peer that is receiving that instance, points the dump's page server at haul (the
 * pages go onto the link as CRIU sends them, never into Incus' checkpoint directory), and leaves
 * an id in that directory that Incus carries to the destination's restore.
 */
export class SourceRole {
  constructor(
    private readonly incus: IncusClient,
    private readonly peers: readonly Peer[],
    private readonly endpoint: EndpointOptions,
    private readonly records: MigrationRecords,
    private readonly defaultMode: HaulMode,
    private readonly criuVersion: () => Promise<CriuVersion>,
    private readonly log: (line: string) => void,
    /** Where lazy migrations keep their action script. */
    private readonly workDir: string,
    /** This host's name, as its peers know it. */
    private readonly hostName: string,
    private readonly inFlight: InFlight,
  ) {}

  /**
   * `callerPid`: the hook's process, which becomes CRIU. `hook`: when the hook stops waiting for
   * the answer, and the signal that it did: peers are offered the migration only while there is
   * time left, and a migration a peer took after the hook gave up is abandoned (the peer told, the
   * id taken back out of Incus' directory, where it would make the native restore need haul).
   */
  async dump(args: readonly string[], callerPid?: number, hook: HookCall = { deadline: Number.POSITIVE_INFINITY, gaveUp: new AbortController().signal }): Promise<HookReply> {
    const pid = Number(argumentOf(args, '-t'));
    const dir = argumentOf(args, '-D');
    // not the final dump of a live move, or someone else already chose where pages go
    if (!pid || !dir || !args.includes('--action-script') || args.includes('--page-server') || args.includes('--lazy-pages')) return { args };
    const instance = await this.incus.instanceWithInit(pid);
    if (!instance) return { args, note: `no Incus instance has init pid ${pid}` };
    const mode = modeOf(instance, this.defaultMode);
    const startedAt = new Date();
    const base = { instance: instance.name, role: 'source' as const, mode, pages: 0, bytes: 0, startedAt: startedAt.toISOString() };
    if (mode === 'off') {
      await this.records.add({ ...base, id: randomUUID(), peer: '', totalMs: 0, result: 'passed-through', error: 'user.haul.mode is off' });
      return { args };
    }
    const id = randomUUID();
    // where the destination's incusd reaches this one for Incus' own migration (see DestinationRole.cutIncusMigration)
    const managerAddresses = this.incus.server().then((server) => [...server.addresses], () => []);
    await this.sweepWorkDir();
    const version = await this.criuVersion();
    const disk = await this.diskCatchUp(instance, pid, startedAt);
    const refusals: string[] = [];
    const idFile = join(dir, MIGRATION_ID_FILE);
    for (const peer of this.peers) {
      const late = tooLateToOffer(hook);
      if (late) {
        refusals.push(`${peer.name}${this.peers.indexOf(peer) < this.peers.length - 1 ? ' and the peers after it' : ''} not asked: ${late}`);
        break;
      }
      let session: LinkSession | undefined;
      let idWritten = false;
      try {
        ({ session } = await withinHookDeadline(dialLink(peer.url, this.endpoint), hook, (late) => late.session.close()));
        // before any await: the peer opens its channels as soon as the session exists
        const migration = SourceMigration.over(session, mode);
        const version3 = `${version.major}.${version.minor}.${version.patch}`;
                await migration.announce({ pid, criuVersion: version3, instance: instance.name, migration_id: id, source_host: this.hostName, restore_timeout_ms: restoreTimeoutMs(instance), manager_addresses: await managerAddresses });
        const accepted = await withinHookDeadline(migration.accepted(PEER_ANSWER_MS), hook);
        if (!accepted.ok) {
          refusals.push(`${peer.name}: ${accepted.error}`);
          session.close();
          continue;
        }
        const layout = headerLayoutFor(version);
        const workDir = join(this.workDir, id);
        await mkdir(workDir, { recursive: true, mode: 0o700 });
        idWritten = true; // before it is: a failed write may leave part of it
        await writeFile(idFile, `${JSON.stringify({ id, source: peer.name, mode })}\n`, { mode: 0o644 });
        const taken = session;
        const abandon = (): void => {
          this.log(`${instance.name}: the CRIU hook gave up waiting for this agent; migration ${id} to ${peer.name} abandoned, the dump runs natively`);
          void rm(idFile, { force: true }).catch(() => {});
          if (taken.isOpen) taken.abort("the source's CRIU hook gave up waiting for its agent: the dump runs natively");
        };
        if (hook.gaveUp.aborted) throw new Error(HOOK_GAVE_UP);
        hook.gaveUp.addEventListener('abort', abandon, { once: true });
        const record = { ...base, id, peer: peer.name };
        const progress = this.inFlight.start({ id, instance: instance.name, role: 'source', peer: peer.name, mode, phase: 'dumping', pages: 0, startedAt: startedAt.toISOString() });
        this.log(`${instance.name}: dump pages go to ${peer.name} through haul (${mode}, migration ${id})`);
        const outgoing: Outgoing = { session, migration, dir, record, startedAt, progress, disk };
        const incusScript = argumentOf(args, '--action-script')!;
        const replaced = (flag: string, value: string, from: readonly string[]): string[] => from.map((arg, at) => (from[at - 1] === flag ? value : arg));
        if (mode === 'pre-copy') {
          // CRIU sends every page to haul's page server, on a unix socket CRIU cannot cork
          // (proxy/dump-to-link.ts)
          const socketPath = join(workDir, 'page-server.sock');
          const local = fitsUnixSocketPath(socketPath);
          const forward = local
            ? await dumpToLinkLocal(session, layout, socketPath)
            : await dumpToLink(session, layout, criuOf(callerPid), { onRefused: (refused) => this.log(`${instance.name}: refused a connection to the dump's page server: ${refused instanceof Error ? refused.message : String(refused)}`) });
          const counting = setInterval(() => this.inFlight.update(progress, { pages: forward.pages.pagesSent }), 500);
          void forward.received.finally(() => clearInterval(counting)).catch(() => {});
          const observed = await ObservedPostDump.create(workDir, incusScript);
          this.follow(outgoing, forward, observed).catch((error: Error) => this.log(`${instance.name}: following migration ${id} failed: ${error.message}`));
          const pageServer = 'port' in forward ? ['--page-server', '--address', '127.0.0.1', '--port', String(forward.port)] : ['--page-server'];
          return { args: [...replaced('--action-script', observed.scriptPath, args), ...pageServer], ...(local ? { pageServerSocket: socketPath } : {}) };
        }
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
        if (lazy.bindableByAnyone) this.log(`${instance.name}: warning: ${lazy.bindableByAnyone}; a local user who binds port ${lazy.port} first can make this move fail (not take it over)`);
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
        this.followLazy(outgoing, actions, layout, { dumpDir, lazy, criu })
          .catch((error: Error) => this.log(`${instance.name}: following lazy migration ${id} failed: ${error.message}`));
        const lazyArgs = replaced('-D', dumpDir, replaced('--action-script', actions.scriptPath, args));
        return { args: [...lazyArgs, ...lazy.criuArgs()] };
      } catch (error) {
        refusals.push(`${peer.name}: ${error instanceof Error ? error.message : String(error)}`);
        // a stray id in Incus' directory would make the native restore wait for haul, and fail
        if (idWritten) await rm(idFile, { force: true }).catch(() => {});
        this.inFlight.end(id);
        if (session?.isOpen) session.abort(hook.gaveUp.aborted ? HOOK_GAVE_UP : 'the source gave up on this peer');
        if (hook.gaveUp.aborted) break;
      }
    }
    const why = refusals.length ? refusals.join('; ') : 'no peers configured';
    await this.records.add({ ...base, id, peer: '', totalMs: Date.now() - startedAt.getTime(), result: 'passed-through', error: `no peer takes ${instance.name}: ${why}` });
    return { args, note: `native move: no peer takes ${instance.name} (${why})` };
  }

  /**
   * Removes the action scripts of migrations long over. Not at a migration's end: CRIU may still
   * run its script then (network-unlock after a failure), and a missing script would fail that.
   */
  private async sweepWorkDir(): Promise<void> {
    const cutoff = Date.now() - WORK_DIR_KEPT_MS;
    for (const name of await readdir(this.workDir).catch(() => [])) {
      const path = join(this.workDir, name);
      const info = await stat(path).catch(() => undefined);
      if (info && info.mtimeMs < cutoff) await rm(path, { recursive: true, force: true });
    }
  }

  /**
   * Whether this move needs haul to carry the disk changes made after Incus' snapshot, and from
   * when: the instance's root pool sends its volume once before the dump (btrfs, zfs); the
   * snapshot comes after the move's "Migrating instance" operation began.
   */
  private async diskCatchUp(instance: IncusInstance, initPid: number, hookCalledAt: Date): Promise<DiskCatchUp | undefined> {
    const pool = instance.expanded_devices?.['root']?.['pool'];
    if (!pool || !SNAPSHOT_ONCE_DRIVERS.has(await this.incus.poolDriver(pool))) return undefined;
    const migrating = (await this.incus.operationsOn(instance.name, 'Migrating instance'))
      .map((op) => Date.parse(op.created_at))
      .filter((at) => Number.isFinite(at));
    // none found (an older Incus, another client): a wide window sends more, never less
    const began = migrating.length ? Math.max(...migrating) : hookCalledAt.getTime() - 60_000;
    const sinceMs = began - SNAPSHOT_MARGIN_MS;
    this.log(`${instance.name}: pool ${pool} sends its disk once before the dump; haul carries what changed since ${new Date(sinceMs).toISOString()}${migrating.length ? '' : " (no 'Migrating instance' operation found: a minute back)"}`);
    return { root: `/proc/${initPid}/root`, sinceMs };
  }

  /**
   * Both modes, once CRIU has handed over what haul sends (the container still frozen): the disk
   * changes where the pool needs them, then the count of what was sent, then until the
   * destination says it stored it all.
   */
  private async imagesStored({ migration, progress, disk, record }: Outgoing, sent: { readonly pages: number; readonly files: number; readonly pageStreams: number }): Promise<void> {
    if (disk) {
      // the memory is dumped and the container still frozen: its disk holds still
      this.inFlight.update(progress, { pages: sent.pages, phase: 'sending the disk changes since the snapshot' });
      const packed = packDiskChanges(disk.root, disk.sinceMs);
      await migration.sendDiskChanges(packed.tar);
      const carried = await packed.done;
      const skipped = carried.skipped.length ? `; not carried (device nodes, fifos, sockets): ${carried.skipped.slice(0, 10).join(', ')}` : '';
      this.log(`${record.instance}: disk changes since the snapshot sent: ${carried.files} files (${carried.bytes} bytes), ${carried.symlinks} symlinks, ${carried.directories} directories${skipped}`);
    }
    this.inFlight.update(progress, { pages: sent.pages, phase: 'waiting for the destination to store the pages and restore' });
    await migration.imagesComplete({ files: sent.files, pageStreams: sent.pageStreams, bytes: 0, filesystemTars: disk ? 1 : 0 });
    await migration.stored(PAGES_STORED_MS);
  }

  /**
   * Until the lazy dump is over and its images are in Incus' directory; fails when the link does,
   * or when CRIU ends without getting there (it failed, and the source runs on).
   */
  private async dumpOver(actions: LazyEarlyActions, session: LinkSession, criu: ProcessIdentity | undefined): Promise<void> {
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

  /** How many page-data files Incus' checkpoint directory holds (none, when every page went through haul). */
  private async checkpointPageFiles(dir: string): Promise<number> {
    return (await readdir(dir)).filter(isPagesFileName).length;
  }

  /**
   * Pre-copy: until the destination holds every page (a failure before that fails CRIU's dump, and
   * Incus resumes the container), then until Incus' post-dump step and haul's destination have
   * both reported the restore, for the record. When they disagree, that is Incus 6.0.4 reporting
   * a failed restore as a success: the record says so.
   */
  private async follow(outgoing: Outgoing, forward: DumpToLink, observed: ObservedPostDump): Promise<void> {
    const { session, migration, dir, record, startedAt, progress } = outgoing;
    let stored = false;
    try {
      const restoreReport = migration.restoreReport(PAGES_STORED_MS).then((result) => ({ result, at: Date.now() }));
      restoreReport.catch(() => {});
      // pages stop flowing when the link fails, and CRIU would wait on its page-server session forever
      const summary = await Promise.race([forward.received, forward.failed]);
      const pages = summary.pagesReceived;
      const checkpointPageFiles = await this.checkpointPageFiles(dir);
      await this.imagesStored(outgoing, { pages, files: 0, pageStreams: forward.pages.pageStreams });
      stored = true;
      this.inFlight.update(progress, { phase: 'restoring on the destination' });
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
      if (report instanceof Error) this.log(`${record.instance}: haul's destination did not confirm the restore (${report.message}); Incus says it succeeded`);
      migration.finish();
      const downtimeMs = report instanceof Error ? undefined : report.at - startedAt.getTime();
      await this.records.add({ ...record, pages, bytes: pages * PAGE_SIZE, checkpointPageFiles, totalMs: Date.now() - startedAt.getTime(), ...(downtimeMs === undefined ? {} : { downtimeMs }), result: 'moved' });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      if (!stored) forward.abandon(); // CRIU's dump fails, and Incus resumes the container
      if (session.isOpen) session.abort(reason);
      this.log(`${record.instance}: migration ${record.id} failed: ${reason}`);
      await this.records.add({ ...record, totalMs: Date.now() - startedAt.getTime(), result: 'failed', error: reason });
    } finally {
      observed.close();
      this.inFlight.end(record.id);
    }
  }

  /**
   * Lazy: once the dump is over, the pages that could not be lazy (as files) and the disk changes;
   * then, once CRIU's lazy page server listens on the guarded port, every lazy page, faults first. The
   * source ends (its page-server session closes) only when the destination has every page and
   * Incus' own post-dump step reported the restore; on any failure a bad header makes CRIU resume
   * it. `criu`: the dump's process, so that a dump that fails before post-dump is not waited for.
   */
  private async followLazy(outgoing: Outgoing, actions: LazyEarlyActions, layout: HeaderLayout, dump: { readonly dumpDir: string; readonly lazy: LazyDump; readonly criu: ProcessIdentity }): Promise<void> {
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
      await this.dumpOver(actions, session, dump.criu);
      const eager = await pagesStoredIn(dumpDir);
      const checkpointPageFiles = await this.checkpointPageFiles(dir);
      const lazyRuns = await lazyRunsIn(dir); // the pagemaps went with the other images
      const { files } = await migration.sendImages(dumpDir, isPagesFileName);
      await this.imagesStored(outgoing, { pages: eager, files, pageStreams: 0 });
      await lazyServerListening(actions.statusReady);
      const client = await dump.lazy.connect(dump.criu, layout);
      const total = lazyRuns.reduce((sum, run) => sum + run.nrPages, 0);
      this.log(`${record.instance}: ${total} lazy pages to move`);
      this.inFlight.update(progress, { phase: 'restored on the destination; moving its memory', pages: eager, totalPages: eager + total });
      const pulled = await migration.movePages(client, lazyRuns, {
        stop: () => incusFailure ?? restoreFailure,
        // while the destination restores, its faults alone: pushing the rest then (a whole
        // container's memory at 1 GiB) slowed the restore and Incus' own steps on the way to it
        pushFrom: Promise.race([restoreReported, actions.incusPostDump, sleep(PUSH_HOLD_MS)]),
        onPages: (moved) => this.inFlight.update(progress, { pages: eager + moved }),
      });
      this.inFlight.update(progress, { phase: "waiting for the destination's last page and Incus' restore report" });
      this.log(`${record.instance}: all ${pulled} lazy pages sent; waiting for the destination and for Incus' restore report`);
      await migration.lazyComplete(PAGES_STORED_MS);
      const status = await actions.incusPostDump;
      this.log(`${record.instance}: Incus' post-dump step ended with ${status}`);
      if (status !== 0) throw new Error(incusFailure!);
      if (restoreFailure) throw new Error(restoreFailure);
      await dump.lazy.end(); // every page has moved and Incus restored it: CRIU ends the source
      migration.finish();
      const pages = eager + pulled;
      const downtimeMs = restoredAt === undefined ? undefined : restoredAt - startedAt.getTime();
      await this.records.add({ ...record, pages, bytes: pages * PAGE_SIZE, checkpointPageFiles, totalMs: Date.now() - startedAt.getTime(), ...(downtimeMs === undefined ? {} : { downtimeMs }), result: 'moved' });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      // CRIU resumes the source: it fails post-dump when not past it yet, else haul ends its lazy
      // page server's session with a bad header (CRIU would wait for a lazy client for good)
      if (!actions.abandon()) resuming = dump.lazy.resume(actions.statusReady).catch((failure: Error) => this.log(`${record.instance}: could not end CRIU's lazy page server: ${failure.message}`));
      if (session.isOpen) session.abort(reason);
      this.log(`${record.instance}: lazy migration ${record.id} failed: ${reason}`);
      await this.records.add({ ...record, totalMs: Date.now() - startedAt.getTime(), result: 'failed', error: reason });
    } finally {
      this.inFlight.end(record.id);
      // CRIU may still be on its way to listening (a failure came first: it goes on to its lazy
      // page server all the same), and would take any client then: the guard goes only with CRIU,
      // or by its own timeout (released already when haul was seen connected to CRIU)
      dump.lazy.releaseWhenGone(dump.criu).then((released) => {
        if (released === 'criu-runs') this.log(`${record.instance}: CRIU's lazy dump ${dump.criu.pid} still runs; its port stays guarded until the guard expires`);
      }).catch((failure: Error) => this.log(`${record.instance}: could not release the guard of port ${dump.lazy.port}: ${failure.message}`));
      // the resume waits for CRIU's status-ready, which the script reports: not closed before it
      await resuming;
      await actions.close();
      // the page data haul sent; the rest of the directory is swept later (CRIU writes its stats
      // there as it ends)
      for (const name of await readdir(dumpDir).catch(() => [])) if (isPagesFileName(name)) await rm(join(dumpDir, name), { force: true });
    }
  }
}

/** The process the hook that asked becomes (CRIU, same pid), as the check of who connected needs it. */
function criuOf(callerPid: number | undefined): Promise<ProcessIdentity> {
  const criu = callerPid === undefined ? undefined : identify(callerPid);
  return criu ? Promise.resolve(criu) : Promise.reject(new Error('the hook did not say which process becomes CRIU, or it is gone'));
}
