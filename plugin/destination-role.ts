import { mkdirSync } from 'node:fs';
import { chmod, copyFile, link, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { sendControl } from '../src/link/control-channel.js';
import { ChannelKind } from '../src/link/frame.js';
import type { LinkSession } from '../src/link/session.js';
import { CacheStore } from '../proxy/cache-store.js';
import { argumentOf, type HookReply } from './hook-protocol.js';
import type { IncusClient } from './incus-client.js';
import type { IncusEvent } from './incus-events.js';
import type { MigrationRecords } from './migration-records.js';
import { MIGRATION_ID_FILE } from './source-role.js';

/** How long an instance counts as being received after its "Creating instance" operation was seen. */
const EXPECTED_FOR_MS = 10 * 60_000;
const EXPECT_WAIT_MS = 5_000;
const PAGES_WAIT_MS = 5 * 60_000;

interface Incoming {
  readonly instance: string;
  readonly peer: string;
  readonly dir: string;
  readonly startedAt: Date;
  readonly complete: Promise<void>;
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
  ) {
    mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
  }

  /** Incus operation events: a "Creating instance" operation is an incoming migration (or a create). */
  onEvent(event: IncusEvent): void {
    if (event.type !== 'operation' || event.metadata.description !== 'Creating instance') return;
    for (const path of event.metadata.resources?.instances ?? []) this.expected.set(instanceName(path), Date.now());
  }

  private async isReceiving(instance: string): Promise<boolean> {
    const deadline = Date.now() + EXPECT_WAIT_MS;
    for (;;) {
      const seen = this.expected.get(instance);
      if (seen !== undefined && Date.now() - seen < EXPECTED_FOR_MS) return true;
      // events can be missed (a listener that falls behind is dropped): ask for the operations too
      const operations = await this.incus.get<Array<{ description: string; status_code: number; resources?: { instances?: string[] } | null }>>('/1.0/operations?recursion=1&all-projects=true').catch(() => []);
      const running = Array.isArray(operations) ? operations : Object.values(operations as Record<string, typeof operations>).flat();
      if (running.some((op) => op.description === 'Creating instance' && op.status_code < 200 && (op.resources?.instances ?? []).some((p) => instanceName(p) === instance))) return true;
      if (Date.now() > deadline) return false;
      await sleep(200);
    }
  }

  /** A session from a peer's source role. */
  serve(session: LinkSession, peer: string): void {
    const dir = join(this.cacheDir, `${Date.now()}-${++this.sessions}`);
    mkdirSync(dir, { mode: 0o700 });
    const store = new CacheStore(session, dir); // before any await: channels are announced at once
    const answers = session.openChannel(ChannelKind.CONTROL, 'answers');
    void (async () => {
      const start = await store.controlWith('migration_start');
      const instance = start.instance ?? '';
      const id = start.migration_id ?? '';
      if (!instance || !id || !(await this.isReceiving(instance))) {
        await sendControl(answers.writable, { migration_accepted: { ok: false, error: `this host is not receiving an instance named ${JSON.stringify(instance)}` } });
        answers.writable.end();
        return;
      }
      this.incoming.set(id, { instance, peer, dir, startedAt: new Date(), complete: store.complete });
      this.arrivals.splice(0).forEach((wake) => wake());
      await sendControl(answers.writable, { migration_accepted: { ok: true, error: '' } });
      try {
        await store.complete;
        await sendControl(answers.writable, { images_stored: { ok: true, error: '' } });
        answers.writable.end();
        this.log(`${instance}: pages of migration ${id} stored, waiting for the restore`);
      } catch (error) {
        const reason = error instanceof Error ? error.message : String(error);
        if (session.isOpen) await sendControl(answers.writable, { images_stored: { ok: false, error: reason } }).catch(() => {});
        throw error;
      }
    })().catch((error: Error) => this.log(`a migration from ${peer} failed: ${error.message}`));
  }

  async restore(args: readonly string[]): Promise<HookReply> {
    const dir = argumentOf(args, '-D');
    if (!dir) return { args };
    let id: string;
    try {
      ({ id } = JSON.parse(await readFile(join(dir, MIGRATION_ID_FILE), 'utf8')) as { id: string });
    } catch {
      return { args }; // a native move: nothing of haul's in it
    }
    // Incus made the restore dir 0700 for the container's root; CRIU 4.1.1's restored init may open
    // timens-N.img before its uid map is written (criu/cr-restore.c: prepare_timens() runs before
    // the PREPARE_NAMESPACES stage) and then cannot search it: about one native move in six fails
    // so here. Searchable by all, the dir lists nothing to others; its files are 0644 already.
    await chmod(dir, 0o711);
    const started = Date.now();
    const deadline = started + PAGES_WAIT_MS;
    let entry = this.incoming.get(id);
    while (!entry && Date.now() < deadline) {
      await Promise.race([new Promise<void>((resolve) => this.arrivals.push(resolve)), sleep(1000)]);
      entry = this.incoming.get(id);
    }
    if (!entry) return { error: `haul: the pages of migration ${id} never arrived on this host` };
    try {
      await Promise.race([entry.complete, sleep(Math.max(0, deadline - Date.now())).then(() => Promise.reject(new Error(`not complete after ${PAGES_WAIT_MS / 1000} s`)))]);
      // the restored tasks read these themselves, as the container's root: world-readable
      for (const name of (await readdir(entry.dir)).filter((n) => /^(pagemap|pages)-.*\.img$/.test(n))) {
        const target = join(dir, name);
        await link(join(entry.dir, name), target).catch(() => copyFile(join(entry!.dir, name), target));
        await chmod(target, 0o644);
      }
    } catch (error) {
      const reason = `haul: the pages of migration ${id} are not usable: ${error instanceof Error ? error.message : String(error)}`;
      await this.records.add({ id, instance: entry.instance, role: 'destination', peer: entry.peer, mode: 'precopy', pages: 0, bytes: 0, startedAt: entry.startedAt.toISOString(), totalMs: Date.now() - entry.startedAt.getTime(), result: 'failed', error: reason });
      return { error: reason };
    }
    const pages = await countPages(entry.dir);
    await this.records.add({ id, instance: entry.instance, role: 'destination', peer: entry.peer, mode: 'precopy', pages, bytes: pages * 4096, startedAt: entry.startedAt.toISOString(), totalMs: Date.now() - entry.startedAt.getTime(), result: 'placed' });
    this.incoming.delete(id);
    this.log(`${entry.instance}: pages of migration ${id} placed for the restore`);
    return { args };
  }
}

function instanceName(path: string): string {
  return decodeURIComponent(path.replace(/\?.*$/, '').split('/').pop() ?? '');
}

async function countPages(dir: string): Promise<number> {
  let bytes = 0;
  for (const name of (await readdir(dir)).filter((n) => /^pages-.*\.img$/.test(n))) bytes += (await stat(join(dir, name))).size;
  return bytes / 4096;
}
