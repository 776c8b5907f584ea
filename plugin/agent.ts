import { mkdir, rm } from 'node:fs/promises';
import { createConnection, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createInterface } from 'node:readline';
import { criuVersion, type CriuVersion } from '../src/criu/index.js';
import { type EndpointOptions, LinkListener } from '../src/link/index.js';
import { DestinationRole } from './destination-role.js';
import { pruneIncomingDirs } from './incoming-migrations.js';
import { answerDeadline, hookReplyText, hookSocketPath, parseHookRequest, type HookReply } from './hook-protocol.js';
import { IncusClient } from './incus-client.js';
import { IncusEvents } from './incus-events.js';
import { IN_FLIGHT_FILE, InFlight, readInFlight, type MigrationProgress } from './in-flight.js';
import { repairFailedArrival } from './arrival-repair.js';
import { MigrationRecords } from './migration-records.js';
import { mendLiblxcArguments } from './liblxc-arguments.js';
import { listenPrivately } from './private-socket.js';
import type { HaulMode } from './haul-mode.js';
import { SourceRole, type Peer } from './source-role.js';
import type { AgentLog } from './agent-log.js';

export interface AgentOptions extends EndpointOptions {
  /** incusd's INCUS_DIR: its unix.socket is there, and the hook finds the agent's socket there. */
  readonly incusDir: string;
  /** Where the agent keeps pages on their way in, and its migration records. */
  readonly stateDir: string;
  readonly listen: { readonly address: string; readonly port: number };
  readonly peers: readonly Peer[];
  /** This host's name, as its peers know it (their --peer NAME=…). */
  readonly name: string;
  readonly defaultMode: HaulMode;
  /** The real CRIU (for its version). */
  readonly criuBinary?: string;
  /** A restore still running after this long is killed, so that the source resumes. */
  readonly restoreTimeoutMs?: number;
  readonly log?: AgentLog;
  /** How long migration records and incoming migrations' directories are kept; the newest records kept at most. */
  readonly retention?: Retention;
}

/**
 * The agent runs only over TLS with pinned certificates. Its peers make it act as root: rewrite
 * the dumps and restores incusd runs, cut incusd's connections, hold incusd at a restore's log.
 * Without TLS (--insecure, loopback) any local user could dial it and be such a peer.
 */
export class InsecureAgentError extends Error {
  override readonly name = 'InsecureAgentError';
  readonly code = 'HAUL_AGENT_INSECURE';
  constructor() {
    super('haul agent refuses --insecure: its peers act on incusd as root, and a link without TLS lets any local user be one; use `haul identity` and `haul trust add` on both hosts');
  }
}

/**
 * `haul agent`: beside incusd on each host. It answers the CRIU hook (dump: source role; restore:
 * destination role), takes peers' links for instances this host receives, follows incusd's events,
 * and records every migration.
 */
export class Agent {
  private constructor(
    private readonly draining: { on: boolean },
    private readonly hookServer: Server,
    readonly listener: LinkListener,
    private readonly events: IncusEvents,
    private readonly incus: IncusClient,
    readonly records: MigrationRecords,
    readonly hookSocket: string,
    private readonly inFlight: InFlight,
    private readonly pruning: NodeJS.Timeout,
  ) {}

  static async start(options: AgentOptions): Promise<Agent> {
    if (options.insecure) throw new InsecureAgentError();
    const log = options.log ?? (() => {});
    await mkdir(options.stateDir, { recursive: true, mode: 0o700 });
    const incus = new IncusClient(join(options.incusDir, 'unix.socket'));
    await incus.get('/1.0'); // fail now, clearly, if incusd is not there
    const records = new MigrationRecords(join(options.stateDir, 'migrations.jsonl'), options.name, log);
    const hookSocket = hookSocketPath(options.incusDir);
    if (await answers(hookSocket)) throw new Error(`another haul agent already serves ${options.incusDir} (${hookSocket})`);
    // what a previous agent still had in flight when it ended (killed: it never closed)
    const leftovers = await readInFlight(join(options.stateDir, IN_FLIGHT_FILE));
    const inFlight = new InFlight(join(options.stateDir, IN_FLIGHT_FILE));
    await inFlight.replaceLeftovers().catch(() => {});
    const criu = (): Promise<CriuVersion> => criuVersion(options.criuBinary);
    const source = new SourceRole(incus, options.peers, options, records, options.defaultMode, criu, log, join(options.stateDir, 'outgoing'), options.name, inFlight);
    const destination = new DestinationRole(incus, join(options.stateDir, 'incoming'), records, log, options.criuBinary, options.restoreTimeoutMs ?? 300_000, inFlight);
    for (const left of leftovers) void finishLeftover(left, incus, records, log).catch(() => {});
    const events = new IncusEvents(join(options.incusDir, 'unix.socket'));
    events.on('event', (event) => destination.onEvent(event));
    events.on('disconnected', (error) => log(`incusd's event stream ended${error ? ` (${error.message})` : ''}; reconnecting, and asking for operations meanwhile`, 'warning'));
    const draining = { on: false };
    const listener = await LinkListener.listen(options.listen.address, options.listen.port, options);
    listener.on('session', (session, _host, remoteAddress) => {
      // a draining agent takes no new move: its peer's source falls back to another peer, or native
      if (draining.on) return session.close();
      destination.serve(session, remoteAddress);
    });
    listener.on('refused', (error) => log(error.message, 'warning'));

    await rm(hookSocket, { force: true });
    const hookServer = createServer((socket) => {
      socket.on('error', () => {});
      // the hook closing its end before the answer has given up waiting (and runs CRIU unchanged)
      const gaveUp = new AbortController();
      let answered = false;
      socket.once('close', () => answered || gaveUp.abort());
      const lines = createInterface({ input: socket });
      lines.on('error', () => {});
      lines.once('line', (line) => {
        const receivedAt = Date.now();
        void (async (): Promise<HookReply> => {
          const request = parseHookRequest(line);
          const hook = { deadline: answerDeadline(request, receivedAt), gaveUp: gaveUp.signal };
          const { args, changes } = mendLiblxcArguments(request.call, request.args);
          if (changes.length > 0) log(`criu ${request.call}: liblxc's arguments mended: ${changes.join('; ')}`);
          // a restore belongs to a move already under way, which a draining agent still carries
          if (request.call === 'dump' && draining.on) return { args, note: 'native move: this haul agent is stopping, and takes no new move' };
          return request.call === 'dump' ? source.dump(args, request.pid, hook) : destination.restore(args, request.pid);
        })()
          .catch((error: Error): HookReply => ({ error: `haul agent: ${error.message}` }))
          .then((reply) => {
            if ('error' in reply) log(reply.error, 'error');
            else if (reply.note) log(reply.note);
            answered = true;
            socket.end(hookReplyText(reply));
          });
      });
    });
    await listenPrivately(hookServer, hookSocket); // root's alone from the first moment: see listenPrivately
    const retention = options.retention ?? DEFAULT_RETENTION;
    const prune = (): Promise<void> => pruneOld(records, join(options.stateDir, 'incoming'), retention, log);
    await prune();
    const pruning = setInterval(() => prune().catch(() => {}), PRUNE_EVERY_MS).unref();
    return new Agent(draining, hookServer, listener, events, incus, records, hookSocket, inFlight, pruning);
  }

  /**
   * Takes no new move (dumps pass through to a native move, peers' links are closed) and resolves
   * once the moves in progress have ended, or after `maxMs` with how many are left; for a stop
   * that must not end a move half-way (a package upgrade, systemctl stop).
   */
  async drain(maxMs: number): Promise<number> {
    this.draining.on = true;
    const deadline = Date.now() + maxMs;
    while (this.inFlight.size > 0 && Date.now() < deadline) await sleep(250);
    return this.inFlight.size;
  }

  /** How many moves this agent is carrying now. */
  get movesInProgress(): number {
    return this.inFlight.size;
  }

  get port(): number {
    return this.listener.port;
  }

  async close(): Promise<void> {
    clearInterval(this.pruning);
    this.events.close();
    await new Promise<void>((resolve) => this.hookServer.close(() => resolve()));
    await rm(this.hookSocket, { force: true });
    await this.listener.close();
    await this.incus.close();
    await this.inFlight.close();
  }
}

/**
 * A migration the previous agent had in flight when it ended (it was killed): recorded as failed
 * and, where this host was receiving, Incus' leftovers repaired once Incus is done failing the move
 * (the previous agent would have: see repairFailedArrival, which never touches an instance Incus
 * kept). The source needs nothing: without its agent the link fails, and CRIU resumes the source.
 */
async function finishLeftover(left: MigrationProgress, incus: IncusClient, records: MigrationRecords, log: AgentLog): Promise<void> {
  const error = `the agent ended during the migration (phase: ${left.phase})`;
  log(`${left.instance}: migration ${left.id} (${left.role}) was left unfinished by the previous agent`, 'warning');
  await records.add({ id: left.id, instance: left.instance, role: left.role, peer: left.peer, mode: left.mode, pages: left.pages, bytes: 0, startedAt: left.startedAt, totalMs: Date.now() - Date.parse(left.startedAt), result: 'failed', error });
  if (left.role !== 'destination') return;
  try {
    log(`${left.instance}: after a migration the previous agent left unfinished: ${await repairFailedArrival(incus, left.instance)}`);
  } catch (failure) {
    log(`${left.instance}: after a migration the previous agent left unfinished, could not repair what Incus left: ${failure instanceof Error ? failure.message : String(failure)}`, 'error');
  }
}

/**
 * How long the agent keeps migration records and incoming migrations' directories, how many records
 * at most, and how much the directories may hold in all.
 */
export interface Retention {
  readonly maxAgeDays: number;
  readonly maxEntries: number;
  readonly maxIncomingMiB: number;
}

export const DEFAULT_RETENTION: Retention = { maxAgeDays: 90, maxEntries: 10_000, maxIncomingMiB: 4096 };
const PRUNE_EVERY_MS = 86_400_000;

/** Drops records and incoming directories past `retention`; never fails the agent (it says why in the log). */
async function pruneOld(records: MigrationRecords, incomingDir: string, retention: Retention, log: AgentLog): Promise<void> {
  const before = Date.now() - retention.maxAgeDays * 86_400_000;
  try {
    const dropped = await records.prune(retention.maxAgeDays, retention.maxEntries);
    const removed = await pruneIncomingDirs(incomingDir, { since: before, maxBytes: retention.maxIncomingMiB * 1024 * 1024 });
    if (dropped || removed) log(`kept the last ${retention.maxAgeDays} days (at most ${retention.maxEntries} records, ${retention.maxIncomingMiB} MiB of incoming migrations): dropped ${dropped} migration records and ${removed} incoming migrations' directories`);
  } catch (error) {
    log(`could not prune old migration records and directories: ${error instanceof Error ? error.message : String(error)}`, 'error');
  }
}

/** Whether something listens on the unix socket at `path`. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection(path);
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
}
