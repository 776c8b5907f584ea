import { randomUUID } from 'node:crypto';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { headerLayoutFor, type CriuVersion } from '../src/criu/index.js';
import { dialLink, type EndpointOptions, type LinkSession } from '../src/link/index.js';
import { SourceMigration, peerHost } from '../proxy/index.js';
import { modeOf, type HaulMode } from './haul-mode.js';
import type { InFlight } from './in-flight.js';
import { MIGRATION_ID_FILE, argumentOf, type HookReply } from './hook-protocol.js';
import { HOOK_GAVE_UP, tooLateToOffer, withinHookDeadline, type HookCall } from './hook-deadline.js';
import type { IncusClient, IncusInstance } from './incus-client.js';
import { dumpRestoreProblem } from './incus-versions.js';
import type { MigrationRecords } from './migration-records.js';
import type { Outgoing, SourceContext } from './source-context.js';
import { diskCatchUp } from './source-disk.js';
import { startLazy } from './source-lazy.js';
import { startPreCopy } from './source-pre-copy.js';
import type { AgentLog } from './agent-log.js';

export type { HookCall } from './hook-deadline.js';

const PEER_ANSWER_MS = 10_000;
/** A migration's action scripts are kept this long, then swept when the next one starts. */
const WORK_DIR_KEPT_MS = 60 * 60_000;

export interface Peer {
  readonly name: string;
  /** wss://HOST:PORT (an agent links over TLS only) */
  readonly url: string;
}

/** The instance's user.haul.restore-timeout (seconds) in ms, 0 when it sets none (or nonsense). */
function restoreTimeoutMs(instance: IncusInstance): number {
  const seconds = Number(instance.expanded_config?.['user.haul.restore-timeout']);
  return Number.isFinite(seconds) && seconds > 0 ? Math.max(1, Math.round(seconds * 1000)) : 0;
}

/**
 * The agent's source side: when liblxc runs the final `criu dump` of an instance that haul moves,
 * finds the peer that is receiving that instance, points the dump's pages at haul (pre-copy:
 * source-pre-copy.ts; lazy: source-lazy.ts), and leaves an id in Incus' checkpoint directory that
 * Incus carries to the destination's restore.
 */
export class SourceRole {
  private readonly context: SourceContext;

  constructor(
    incus: IncusClient,
    private readonly peers: readonly Peer[],
    private readonly endpoint: EndpointOptions,
    records: MigrationRecords,
    private readonly defaultMode: HaulMode,
    private readonly criuVersion: () => Promise<CriuVersion>,
    log: AgentLog,
    /** Where migrations keep their action scripts and page-server sockets. */
    private readonly workDir: string,
    /** This host's name, as its peers know it. */
    private readonly hostName: string,
    inFlight: InFlight,
  ) {
    this.context = { incus, records, log, inFlight };
  }

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
    if (!pid || !dir || !args.includes('--action-script') || args.includes('--page-server') || args.includes('--lazy-pages')) return { args, note: `criu dump of pid ${pid || '?'} is not the final dump of a live move (a stateful stop or snapshot): run unchanged` };
    const instance = await this.context.incus.instanceWithInit(pid);
    if (!instance) return { args, note: `no Incus instance has init pid ${pid}` };
    const mode = modeOf(instance, this.defaultMode);
    const startedAt = new Date();
    const base = { instance: instance.name, role: 'source' as const, mode, pages: 0, bytes: 0, startedAt: startedAt.toISOString() };
    if (mode === 'off') {
      await this.context.records.add({ ...base, id: randomUUID(), peer: '', totalMs: 0, result: 'passed-through', error: 'user.haul.mode is off' });
      return { args, note: `native move: user.haul.mode of ${instance.name} is off` };
    }
    const id = randomUUID();
    // where the destination's incusd reaches this one for Incus' own migration (see DestinationRole.cutIncusMigration)
    const managerAddresses = this.context.incus.server().then((server) => [...server.addresses], () => []);
    const incusHere = this.context.incus.version().catch(() => '');
    await this.sweepWorkDir();
    const version = await this.criuVersion();
    const disk = await diskCatchUp(this.context, instance, pid, startedAt);
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
        let peerHello: Buffer;
        ({ session, peer: peerHello } = await withinHookDeadline(dialLink(peer.url, this.endpoint, { peerName: peer.name }), hook, (late) => late.session.close()));
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
        // the peer receives this instance: where its Incus cannot restore what this one dumps, a
        // native move would fail there too, after the container was frozen; fail the dump first
        const problem = dumpRestoreProblem(args, await incusHere, peerHost(peerHello).incus_version);
        if (problem) {
          session.abort(`refused: ${problem}`);
          const error = `haul: ${instance.name} cannot move to ${peer.name}: ${problem}`;
          await this.context.records.add({ ...base, id, peer: peer.name, totalMs: Date.now() - startedAt.getTime(), result: 'failed', error });
          return { error };
        }
        const layout = headerLayoutFor(version);
        const workDir = join(this.workDir, id);
        await mkdir(workDir, { recursive: true, mode: 0o700 });
        idWritten = true; // before it is: a failed write may leave part of it
        await writeFile(idFile, `${JSON.stringify({ id, source: peer.name, mode })}\n`, { mode: 0o644 });
        const taken = session;
        const abandon = (): void => {
          this.context.log(`${instance.name}: the CRIU hook gave up waiting for this agent; migration ${id} to ${peer.name} abandoned, the dump runs natively`, 'warning');
          void rm(idFile, { force: true }).catch(() => {});
          if (taken.isOpen) taken.abort("the source's CRIU hook gave up waiting for its agent: the dump runs natively");
        };
        if (hook.gaveUp.aborted) throw new Error(HOOK_GAVE_UP);
        hook.gaveUp.addEventListener('abort', abandon, { once: true });
        const record = { ...base, id, peer: peer.name };
        const progress = this.context.inFlight.start({ id, instance: instance.name, role: 'source', peer: peer.name, mode, phase: 'dumping', pages: 0, startedAt: startedAt.toISOString() });
        this.context.log(`${instance.name}: dump pages go to ${peer.name} through haul (${mode}, migration ${id})`);
        const outgoing: Outgoing = { session, migration, dir, record, startedAt, progress, disk };
        const how = { workDir, layout, incusScript: argumentOf(args, '--action-script')!, callerPid, args };
        return mode === 'pre-copy' ? await startPreCopy(this.context, outgoing, how) : await startLazy(this.context, outgoing, how);
      } catch (error) {
        refusals.push(`${peer.name}: ${error instanceof Error ? error.message : String(error)}`);
        // a stray id in Incus' directory would make the native restore wait for haul, and fail
        if (idWritten) await rm(idFile, { force: true }).catch(() => {});
        this.context.inFlight.end(id);
        if (session?.isOpen) session.abort(hook.gaveUp.aborted ? HOOK_GAVE_UP : 'the source gave up on this peer');
        if (hook.gaveUp.aborted) break;
      }
    }
    const why = refusals.length ? refusals.join('; ') : 'no peers configured';
    await this.context.records.add({ ...base, id, peer: '', totalMs: Date.now() - startedAt.getTime(), result: 'passed-through', error: `no peer takes ${instance.name}: ${why}` });
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

}
