import { lstat, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { LinkSession } from '../src/link/index.js';
import { BadNameError, migrationId } from '../src/name-grammars.js';
import { parseMode, DestinationMigration, discardImages } from '../proxy/index.js';
import type { DestinationContext, Incoming } from './destination-context.js';
import { PAGES_WAIT_MS } from './destination-context.js';
import { instanceNameOf } from './incus-client.js';
import type { IncusEvent } from './incus-events.js';
import { cuttableEndpoints } from './incus-connections.js';
import { instanceName } from './instance-name.js';
import { restoreTimeoutFor } from './peer-limits.js';

/** How long an instance counts as being received after its "Creating instance" operation was seen. */
const EXPECTED_FOR_MS = 10 * 60_000;
const EXPECT_WAIT_MS = 5_000;

/** An incoming migration's directory: when it began (ms since the epoch), then a count. */
const INCOMING_DIR = /^(\d{1,15})-\d{1,9}$/;

/** No migration runs this long: a directory younger may be one in progress, and is kept whatever its size. */
export const INCOMING_IN_USE_MS = 86_400_000;

/** What `pruneIncomingDirs` keeps: directories begun since `since`, of at most `maxBytes` in all. */
export interface IncomingRetention {
  readonly since: number;
  readonly maxBytes: number;
  readonly now?: number;
}

/**
 * Removes the incoming migrations' directories (the restore's logs, a failed move's pages) that
 * began before `since`, then the oldest of the others until they hold at most `maxBytes` (never one
 * begun in the last INCOMING_IN_USE_MS); resolves how many it removed. Only names of the agent's
 * own making, only directories themselves (a link there is left alone, never followed).
 */
export async function pruneIncomingDirs(cacheDir: string, retention: IncomingRetention): Promise<number> {
  const now = retention.now ?? Date.now();
  const dirs: Array<{ path: string; began: number }> = [];
  for (const name of await readdir(cacheDir).catch(() => [] as string[])) {
    const began = INCOMING_DIR.exec(name);
    if (!began) continue;
    const path = join(cacheDir, name);
    if ((await lstat(path).catch(() => undefined))?.isDirectory()) dirs.push({ path, began: Number(began[1]) });
  }
  dirs.sort((a, b) => a.began - b.began);
  let removed = 0;
  const kept: Array<{ path: string; began: number; bytes: number }> = [];
  for (const dir of dirs) {
    if (dir.began < retention.since) {
      await rm(dir.path, { recursive: true, force: true });
      removed++;
    } else kept.push({ ...dir, bytes: await bytesBelow(dir.path) });
  }
  let total = kept.reduce((sum, dir) => sum + dir.bytes, 0);
  for (const dir of kept) {
    if (total <= retention.maxBytes || dir.began > now - INCOMING_IN_USE_MS) break;
    await rm(dir.path, { recursive: true, force: true });
    total -= dir.bytes;
    removed++;
  }
  return removed;
}

/** The bytes the files below `dir` take on disk, links not followed. */
async function bytesBelow(dir: string): Promise<number> {
  let bytes = 0;
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) bytes += await bytesBelow(path);
    else bytes += ((await lstat(path).catch(() => undefined))?.blocks ?? 0) * 512;
  }
  return bytes;
}

/**
 * The migrations peers send this host: each is accepted only for an instance this host's incusd
 * is receiving, and its pages are stored restore-ready as they arrive (DestinationMigration),
 * until the restore of its id takes it.
 */
export class IncomingMigrations {
  private readonly expected = new Map<string, number>(); // instance name -> when its creation was seen
  private readonly incoming = new Map<string, Incoming>(); // by migration id
  private readonly arrivals: Array<() => void> = [];
  private sessions = 0;

  constructor(
    private readonly context: DestinationContext,
    /** How long a restore may run before haul kills it (Incus has no limit); per instance: user.haul.restore-timeout. */
    private readonly restoreTimeoutMs: number,
  ) {}

  /** Incus operation events: a "Creating instance" operation is an incoming migration (or a create). */
  onEvent(event: IncusEvent): void {
    if (event.type !== 'operation' || event.metadata.description !== 'Creating instance') return;
    for (const path of event.metadata.resources?.instances ?? []) this.expected.set(instanceNameOf(path), Date.now());
  }

  /** The migration of `id` once it arrived (its pages may still be on their way), waiting until `deadline`. */
  async arrival(id: string, deadline: number): Promise<Incoming | undefined> {
    let entry = this.incoming.get(id);
    while (!entry && Date.now() < deadline) {
      await Promise.race([new Promise<void>((resolve) => this.arrivals.push(resolve)), sleep(1000)]);
      entry = this.incoming.get(id);
    }
    return entry;
  }

  /** The restore took it: no other restore can. */
  take(id: string): void {
    this.incoming.delete(id);
  }

  private async isReceiving(instance: string): Promise<boolean> {
    const deadline = Date.now() + EXPECT_WAIT_MS;
    for (;;) {
      const seen = this.expected.get(instance);
      if (seen !== undefined && Date.now() - seen < EXPECTED_FOR_MS) return true;
      // events can be missed (a listener that falls behind is dropped): ask for the operations too
      if (await this.context.incus.isCreating(instance)) return true;
      if (Date.now() > deadline) return false;
      await sleep(200);
    }
  }

  /** A session from a peer's source role; `peerAddress`: the remote address of the connection it came over. */
  serve(session: LinkSession, peerAddress: string | undefined): void {
    const { context } = this;
    const dir = join(context.cacheDir, `${Date.now()}-${++this.sessions}`);
    // before any await: the source's channels are announced at once
    const migration = DestinationMigration.begin(session, dir, context.criuBinary ? { criuBinary: context.criuBinary } : {});
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
        context.log(`a migration from ${peer} refused: ${error.message}`, 'warning');
        return turnDown(`${error.code}: ${error.message}`);
      }
      if (!(await this.isReceiving(instance))) return turnDown(`this host is not receiving an instance named ${JSON.stringify(instance)}`);
      const mode = parseMode(start.mode);
      if (!mode) return turnDown(`this host does not know the migration mode ${JSON.stringify(start.mode)}`);
      const startedAt = new Date();
      const progress = context.inFlight.start({ id, instance, role: 'destination', peer, mode, phase: 'receiving pages', pages: 0, startedAt: startedAt.toISOString() });
      const counting = setInterval(() => context.inFlight.update(progress, { pages: store.pagesStored }), 500);
      const stopCounting = (): void => {
        clearInterval(counting);
        context.inFlight.update(progress, { pages: store.pagesStored });
      };
      void store.complete.then(stopCounting, () => {
        stopCounting();
        context.inFlight.end(id);
      });
      const restoreTimeoutMs = restoreTimeoutFor(start.restore_timeout_ms, this.restoreTimeoutMs);
      if (restoreTimeoutMs < start.restore_timeout_ms) context.log(`${instance}: ${peer} asks for a restore timeout of ${start.restore_timeout_ms / 1000} s; this host allows at most ${this.restoreTimeoutMs / 1000} s (--restore-timeout)`, 'warning');
      const manager = cuttableEndpoints(start.manager_addresses, peerAddress);
      if (manager.ignored.length) context.log(`${instance}: ignored incusd addresses from ${peer} that are not IP addresses of the link's peer (${peerAddress ?? 'unknown'}) or past the first few: ${manager.ignored.slice(0, 8).join(', ')}`, 'warning');
      this.incoming.set(id, { mode, session, migration, lazyPages, instance, peer, dir, startedAt, complete: store.complete, progress, restoreTimeoutMs, sourceManagerAddresses: manager.endpoints });
      // the source gave up before the restore came: nothing is in progress here any more
      session.once('aborted', () => {
        if (!this.incoming.has(id)) return;
        context.inFlight.end(id);
        discardImages(dir).catch((error: Error) => context.log(`${instance}: the pages of migration ${id} could not be discarded: ${error.message}`, 'error'));
        // kept a while, so that a restore Incus still starts fails at once, saying why, instead of
        // waiting for pages that will not come; then forgotten
        setTimeout(() => this.incoming.get(id)?.session === session && this.incoming.delete(id), PAGES_WAIT_MS).unref();
      });
      this.arrivals.splice(0).forEach((wake) => wake());
      await migration.accept();
      await migration.receive();
      context.log(`${instance}: pages of migration ${id} stored, waiting for the restore`);
      context.inFlight.update(progress, { phase: 'pages stored; waiting for Incus to restore' });
    })().catch((error: Error) => context.log(`an incoming migration failed: ${error.message}`, 'error'));
  }
}
