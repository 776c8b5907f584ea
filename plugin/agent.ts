import { chmod, mkdir, rm } from 'node:fs/promises';
import { createConnection, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { criuVersion, type CriuVersion } from '../src/criu/run/criu-version.js';
import type { EndpointOptions } from '../src/link/endpoint-options.js';
import { LinkListener } from '../src/link/listener.js';
import { DestinationRole } from './destination-role.js';
import { hookReplyText, hookSocketPath, parseHookRequest, type HookReply } from './hook-protocol.js';
import { IncusClient } from './incus-client.js';
import { IncusEvents } from './incus-events.js';
import { IN_FLIGHT_FILE, InFlight } from './in-flight.js';
import { MigrationRecords } from './migration-records.js';
import { SourceRole, type HaulMode, type Peer } from './source-role.js';

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
  readonly log?: (line: string) => void;
}

/**
 * `haul agent`: beside incusd on each host. It answers the CRIU hook (dump: source role; restore:
 * destination role), takes peers' links for instances this host receives, follows incusd's events,
 * and records every migration.
 */
export class Agent {
  private constructor(
    private readonly hookServer: Server,
    readonly listener: LinkListener,
    private readonly events: IncusEvents,
    private readonly incus: IncusClient,
    readonly records: MigrationRecords,
    readonly hookSocket: string,
    private readonly inFlight: InFlight,
  ) {}

  static async start(options: AgentOptions): Promise<Agent> {
    const log = options.log ?? (() => {});
    await mkdir(options.stateDir, { recursive: true, mode: 0o700 });
    const incus = new IncusClient(join(options.incusDir, 'unix.socket'));
    await incus.get('/1.0'); // fail now, clearly, if incusd is not there
    const records = new MigrationRecords(join(options.stateDir, 'migrations.jsonl'), options.name);
    const inFlight = new InFlight(join(options.stateDir, IN_FLIGHT_FILE));
    let version: Promise<CriuVersion> | undefined;
    const criu = (): Promise<CriuVersion> => (version ??= criuVersion(options.criuBinary));
    const source = new SourceRole(incus, options.peers, options, records, options.defaultMode, criu, log, join(options.stateDir, 'outgoing'), options.name, inFlight);
    const destination = new DestinationRole(incus, join(options.stateDir, 'incoming'), records, log, criu, options.criuBinary, options.restoreTimeoutMs ?? 300_000, inFlight);
    const events = new IncusEvents(join(options.incusDir, 'unix.socket'));
    events.on('event', (event) => destination.onEvent(event));
    events.on('disconnected', (error) => log(`incusd's event stream ended${error ? ` (${error.message})` : ''}; reconnecting, and asking for operations meanwhile`));
    const listener = await LinkListener.listen(options.listen.address, options.listen.port, options);
    listener.on('session', (session) => destination.serve(session));
    listener.on('refused', (error) => log(error.message));

    const hookSocket = hookSocketPath(options.incusDir);
    if (await answers(hookSocket)) throw new Error(`another haul agent already serves ${options.incusDir} (${hookSocket})`);
    await rm(hookSocket, { force: true });
    const hookServer = createServer((socket) => {
      socket.on('error', () => {});
      const lines = createInterface({ input: socket });
      lines.on('error', () => {});
      lines.once('line', (line) => {
        void (async (): Promise<HookReply> => {
          const request = parseHookRequest(line);
          return request.call === 'dump' ? source.dump(request.args, request.pid) : destination.restore(request.args, request.pid);
        })()
          .catch((error: Error): HookReply => ({ error: `haul agent: ${error.message}` }))
          .then((reply) => {
            if ('error' in reply) log(reply.error);
            else if (reply.note) log(reply.note);
            socket.end(hookReplyText(reply));
          });
      });
    });
    await new Promise<void>((resolve, reject) => hookServer.once('error', reject).listen(hookSocket, resolve));
    await chmod(hookSocket, 0o600);
    return new Agent(hookServer, listener, events, incus, records, hookSocket, inFlight);
  }

  get port(): number {
    return this.listener.port;
  }

  async close(): Promise<void> {
    this.events.close();
    await new Promise<void>((resolve) => this.hookServer.close(() => resolve()));
    await rm(this.hookSocket, { force: true });
    await this.listener.close();
    await this.incus.close();
    await this.inFlight.close();
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
