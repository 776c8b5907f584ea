import { randomUUID } from 'node:crypto';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { headerLayoutFor, type CriuVersion } from '../src/criu/run/criu-version.js';
import { receiveControl, sendControl } from '../src/link/control-channel.js';
import { dialLink } from '../src/link/dialer.js';
import type { EndpointOptions } from '../src/link/endpoint-options.js';
import { ChannelKind } from '../src/link/frame.js';
import type { Control } from '../src/link/messages.js';
import type { LinkSession } from '../src/link/session.js';
import { dumpToLink } from '../proxy/dump-to-link.js';
import { argumentOf, type HookReply } from './hook-protocol.js';
import type { IncusClient, IncusInstance } from './incus-client.js';
import type { MigrationRecord, MigrationRecords } from './migration-records.js';

/** Written into Incus' checkpoint directory: Incus carries it to the destination's restore directory. */
export const MIGRATION_ID_FILE = 'haul-migration.json';
const PEER_ANSWER_MS = 10_000;
const PAGES_STORED_MS = 10 * 60_000;

export type HaulMode = 'precopy' | 'lazy' | 'off';

export interface Peer {
  readonly name: string;
  /** wss://HOST:PORT, or ws://127.0.0.1:PORT with insecure */
  readonly url: string;
}

/** The instance's user.haul.mode (own or from a profile), else the agent's default. */
export function modeOf(instance: IncusInstance, fallback: HaulMode): HaulMode {
  const value = instance.expanded_config['user.haul.mode'];
  return value === 'precopy' || value === 'lazy' || value === 'off' ? value : fallback;
}

/** The destination's answers on the control channel it opens. */
function answersOf(session: LinkSession): { next<K extends keyof Control>(field: K, ms: number): Promise<NonNullable<Control[K]>> } {
  const seen: Control[] = [];
  const waiters: Array<() => void> = [];
  let failure: Error | undefined;
  const wake = (): void => waiters.splice(0).forEach((w) => w());
  session.once('aborted', (error) => ((failure = error), wake()));
  session.on('channel', (channel) => {
    if (channel.kind !== ChannelKind.CONTROL) return;
    void (async () => {
      for await (const message of receiveControl(channel.readable as Readable)) (seen.push(message), wake());
      failure ??= new Error('the destination ended its control channel');
      wake();
    })().catch((error: Error) => ((failure ??= error), wake()));
  });
  return {
    async next(field, ms) {
      const deadline = Date.now() + ms;
      for (;;) {
        const found = seen.find((message) => message[field]);
        if (found) return found[field]!;
        if (failure) throw failure;
        if (Date.now() > deadline) throw new Error(`the destination did not answer (${field}) within ${ms} ms`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, Math.max(0, deadline - Date.now()) + 1).unref();
        });
      }
    },
  };
}

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
  ) {}

  async dump(args: readonly string[]): Promise<HookReply> {
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
    const version = await this.criuVersion();
    const refusals: string[] = [];
    for (const peer of this.peers) {
      let session: LinkSession | undefined;
      try {
        ({ session } = await dialLink(peer.url, this.endpoint));
        const answers = answersOf(session); // before any await: the peer opens its channel at once
        const control = session.openChannel(ChannelKind.CONTROL, 'migration');
        const version3 = `${version.major}.${version.minor}.${version.patch}`;
        await sendControl(control.writable, { migration_start: { mode: 'pre-copy', pid, criu_version: version3, instance: instance.name, migration_id: id } });
        const accepted = await answers.next('migration_accepted', PEER_ANSWER_MS);
        if (!accepted.ok) {
          refusals.push(`${peer.name}: ${accepted.error}`);
          session.close();
          continue;
        }
        const forward = await dumpToLink(session, headerLayoutFor(version));
        await writeFile(join(dir, MIGRATION_ID_FILE), `${JSON.stringify({ id, source: peer.name, mode })}\n`, { mode: 0o644 });
        const record = { ...base, id, peer: peer.name, mode: 'precopy' as const };
        const reason = mode === 'lazy' ? 'lazy is not built yet; moved pre-copy' : undefined;
        void this.follow(session, control.writable, answers, forward, dir, record, startedAt, reason);
        this.log(`${instance.name}: dump pages go to ${peer.name} through haul (migration ${id})`);
        return { args: [...args, '--page-server', '--address', '127.0.0.1', '--port', String(forward.port)] };
      } catch (error) {
        refusals.push(`${peer.name}: ${error instanceof Error ? error.message : String(error)}`);
        if (session?.isOpen) session.abort('the source gave up on this peer');
      }
    }
    const why = refusals.length ? refusals.join('; ') : 'no peers configured';
    await this.records.add({ ...base, id, peer: '', totalMs: Date.now() - startedAt.getTime(), result: 'passed-through', error: `no peer takes ${instance.name}: ${why}` });
    return { args, note: `native move: no peer takes ${instance.name} (${why})` };
  }

  /** Until the destination holds every page: then the record; on failure, CRIU's dump fails with it. */
  private async follow(
    session: LinkSession,
    control: Writable,
    answers: ReturnType<typeof answersOf>,
    forward: Awaited<ReturnType<typeof dumpToLink>>,
    dir: string,
    record: Omit<MigrationRecord, 'totalMs' | 'result'>,
    startedAt: Date,
    note: string | undefined,
  ): Promise<void> {
    try {
      const summary = await forward.received;
      const checkpointPageFiles = (await readdir(dir)).filter((name) => /^pages-.*\.img$/.test(name)).length;
      await sendControl(control, { images_complete: { files: 0, page_streams: forward.pages.pageStreams, bytes: 0n } });
      const stored = await answers.next('images_stored', PAGES_STORED_MS);
      if (!stored.ok) throw new Error(`the destination could not store the pages: ${stored.error}`);
      control.end();
      session.close();
      await this.records.add({ ...record, pages: summary.pagesReceived, bytes: summary.pagesReceived * 4096, checkpointPageFiles, totalMs: Date.now() - startedAt.getTime(), result: 'moved', ...(note ? { error: note } : {}) });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      // the dump (or the restore waiting for these pages) fails, and Incus resumes the container
      forward.abandon();
      if (session.isOpen) session.abort(reason);
      this.log(`${record.instance}: migration ${record.id} failed: ${reason}`);
      await this.records.add({ ...record, totalMs: Date.now() - startedAt.getTime(), result: 'failed', error: reason });
    }
  }
}
