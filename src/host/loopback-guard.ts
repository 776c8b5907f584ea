import { execFile } from 'node:child_process';
import { createConnection, type Socket } from 'node:net';
import { pickPrivilegedLoopbackPort } from './loopback-ports.js';

/** nftables could not set up or change the guard. */
export class LoopbackGuardError extends Error {
  override readonly name = 'LoopbackGuardError';
  readonly code = 'HAUL_LOOPBACK_GUARD';
}

/** A loopback TCP port only root's sockets may connect to, until released. */
export interface LoopbackGuard {
  readonly port: number;
  /** Set when a local user could have bound the port before its listener: see PickedPort. */
  readonly bindableByAnyone?: string;
  /**
   * From now on, no new connection to the port but the ones made by `connect` (below), whoever
   * makes it: root's too. Connections already made go on.
   */
  admitOnlyOwnClients(): Promise<void>;
  /**
   * Connects to the port from a loopback port below net.ipv4.ip_unprivileged_port_start that the
   * guard admits, so that this is the connection that gets through once only admitted clients may.
   */
  connect(): Promise<Socket>;
  /**
   * Lets everyone connect again; never throws (the elements also expire by themselves). Every call
   * resolves when the first one's removal is done.
   */
  release(): Promise<void>;
}

export interface LoopbackGuardOptions {
  /** The nft program; found on PATH by default. */
  readonly nft?: string;
  /** How long the guard holds if haul never releases it (it died): the set elements' timeout. */
  readonly expireAfterSeconds?: number;
  /** Admit only the guard's own clients from the start (see LoopbackGuard.admitOnlyOwnClients). */
  readonly ownClientsOnly?: boolean;
  /** Where net.ipv4.ip_unprivileged_port_start is read (tests point it elsewhere). */
  readonly unprivilegedPortStart?: string;
}

const TABLE = 'inet haul';
const PORTS = 'guarded_loopback_ports';
const OWN_CLIENTS_ONLY = 'own_clients_only_ports';
const ADMITTED = 'admitted_loopback_clients';
const DEFAULT_EXPIRY_S = 6 * 3600;
const CONNECT_TRIES = 4;
const GUARD_TRIES = 8;

/**
 * Keeps every local user but root from connecting to `port` on loopback, for a listener haul
 * cannot check connections on itself: the page server `criu dump --lazy-pages` opens and serves to
 * the first client it accepts (criu/util.c run_tcp_server accepts one connection; a CLOSE from
 * anyone there makes CRIU count the migration done and end the source).
 *
 * One nftables table holds a set of guarded ports and an output rule that resets a connection to
 * one of them from a socket whose owner is not uid 0; each guard is one element of that set, with a
 * timeout, so a guard haul could not release (it was killed) goes away by itself. The rule sees
 * the connecting socket's owner (meta skuid), which a user namespace cannot fake: it is the uid on
 * this host. Containers have network namespaces of their own and reach this loopback only through
 * a process of the host: Incus' forkproxy (a `proxy` device that connects to 127.0.0.1) is one, and
 * runs as root. So once only CRIU's one client should get in, a second set says the port takes
 * new connections from admitted client ports alone (a pair of ports per client, in a third set,
 * from root's sockets): ports below ip_unprivileged_port_start where the host has them, which no
 * forkproxy picks as its source port and no user can bind.
 * Set up before the port is handed to the program that will listen on it.
 */
export async function guardLoopbackPort(port: number, options: LoopbackGuardOptions = {}): Promise<LoopbackGuard> {
  if (!isPort(port)) throw new LoopbackGuardError(`no such TCP port: ${port}`);
  const nft = options.nft ?? 'nft';
  const expiry = options.expireAfterSeconds ?? DEFAULT_EXPIRY_S;
  // the client port of the first `connect`, admitted in the same transaction: admitting it then
  // would be one more nft run between CRIU listening and haul reaching it, inside the freeze. Only
  // a port no user may bind and no forkproxy picks as its source: admitted but not yet bound, any
  // root socket from it gets in; a port any user may bind is admitted only as haul connects
  const pick = options.ownClientsOnly ? await pickPrivilegedLoopbackPort('client', pickOptions(options)) : undefined;
  const clientAhead = pick && pick.bindableByAnyone === undefined ? pick.port : undefined;
  // create, not add: a port another guard holds is refused, never shared (its release would end both)
  await runNft(nft, ['-f', '-'], [
    ...guardScript(),
    `create element ${TABLE} ${PORTS} { ${port} timeout ${expiry}s }`,
    ...(options.ownClientsOnly ? [`add element ${TABLE} ${OWN_CLIENTS_ONLY} { ${port} timeout ${expiry}s }`] : []),
    ...(clientAhead !== undefined ? [`add element ${TABLE} ${ADMITTED} { ${port} . ${clientAhead} timeout ${expiry}s }`] : []),
  ].join('\n'));
  const admitted = (clientPort: number): string => `${ADMITTED} { ${port} . ${clientPort} }`;
  const added: string[] = [
    `${PORTS} { ${port} }`,
    ...(options.ownClientsOnly ? [`${OWN_CLIENTS_ONLY} { ${port} }`] : []),
    ...(clientAhead !== undefined ? [admitted(clientAhead)] : []),
  ];
  let unusedClientPort = clientAhead;
  let released: Promise<void> | undefined;
  const deleteElement = (element: string): Promise<void> => runNft(nft, ['delete', 'element', ...TABLE.split(' '), ...element.split(' ')], '').catch(() => {});
  const drop = async (element: string): Promise<void> => {
    const at = added.indexOf(element);
    if (at >= 0) added.splice(at, 1);
    await deleteElement(element);
  };
  const admit = async (clientPort: number): Promise<void> => {
    await runNft(nft, ['-f', '-'], `add element ${TABLE} ${ADMITTED} { ${port} . ${clientPort} timeout ${expiry}s }`);
    added.push(admitted(clientPort));
    // released meanwhile: that release did not see this element
    if (released) await drop(admitted(clientPort));
  };
  return {
    port,
    async admitOnlyOwnClients() {
      if (added.some((element) => element.startsWith(OWN_CLIENTS_ONLY))) return;
      await runNft(nft, ['-f', '-'], `add element ${TABLE} ${OWN_CLIENTS_ONLY} { ${port} timeout ${expiry}s }`);
      added.push(`${OWN_CLIENTS_ONLY} { ${port} }`);
    },
    async connect() {
      if (released) throw new LoopbackGuardError(`the guard of port ${port} was released`);
      let lastError: unknown;
      const tried = new Set<number>();
      for (let attempt = 0; attempt < CONNECT_TRIES; attempt++) {
        let clientPort = unusedClientPort;
        unusedClientPort = undefined;
        if (clientPort === undefined) {
          // below ip_unprivileged_port_start where the host has such ports; any free one otherwise
          // (the admitting rule wants a root socket all the same)
          clientPort = (await pickPrivilegedLoopbackPort('client', pickOptions(options, tried))).port;
          await admit(clientPort);
        }
        tried.add(clientPort);
        try {
          return await connectFrom(port, clientPort);
        } catch (error) {
          lastError = error;
          // the client port was taken between the pick (or the set-up) and the bind: the sockets
          // of whoever holds it must not stay admitted
          if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
          await drop(admitted(clientPort));
        }
      }
      throw new LoopbackGuardError(`no free client port to reach port ${port} from`, { cause: lastError });
    },
    release() {
      // every call has the same end: the first call's, still on its way or not
      released ??= (async () => {
        const elements = added.splice(0);
        // one transaction for all (each nft run deleting takes some 30 ms here); where it fails,
        // one per element, so that one already expired does not keep the others
        const all = await runNft(nft, ['-f', '-'], elements.map((element) => `delete element ${TABLE} ${element}`).join('\n')).then(() => true, () => false);
        if (!all) for (const element of elements) await deleteElement(element);
      })();
      return released;
    },
  };
}

/**
 * A guard on a loopback port haul picks for a listener (pickPrivilegedLoopbackPort), free and held
 * by no other guard; a port another guard took meanwhile is passed over. `bindableByAnyone` as the
 * pick says.
 */
export async function guardNewLoopbackPort(options: LoopbackGuardOptions = {}): Promise<LoopbackGuard> {
  const tried = new Set<number>();
  let lastError: unknown;
  for (let attempt = 0; attempt < GUARD_TRIES; attempt++) {
    const picked = await pickPrivilegedLoopbackPort('listener', pickOptions(options, tried));
    tried.add(picked.port);
    try {
      const guard = await guardLoopbackPort(picked.port, options);
      return picked.bindableByAnyone === undefined ? guard : { ...guard, bindableByAnyone: picked.bindableByAnyone };
    } catch (error) {
      lastError = error;
      if (error instanceof LoopbackGuardError && error.cause !== undefined && (error.cause as NodeJS.ErrnoException).code === 'ENOENT') throw error; // no nft at all
    }
  }
  throw lastError instanceof Error ? lastError : new LoopbackGuardError('no loopback port could be guarded', { cause: lastError });
}

/** Whether this host's nftables would take a guard, asked without changing anything (nft --check). */
export async function canGuardLoopbackPorts(options: Pick<LoopbackGuardOptions, 'nft'> = {}): Promise<void> {
  await runNft(options.nft ?? 'nft', ['--check', '-f', '-'], [...guardScript(), `add element ${TABLE} ${PORTS} { 1 timeout 1s }`].join('\n'));
}

/**
 * One transaction: the table, sets and chains are made if missing, the chains' rules replaced by
 * the same ones (so set-ups running at once agree).
 */
function guardScript(): string[] {
  const output = (family: 'ip' | 'ip6', loopback: string): string[] => [
    `add rule ${TABLE} loopback_output ${family} daddr ${loopback} tcp dport . tcp sport @${ADMITTED} meta skuid 0 accept`,
    `add rule ${TABLE} loopback_output ${family} daddr ${loopback} tcp dport @${PORTS} meta skuid != 0 reject with tcp reset`,
    // only a new connection's first packet: the ones made before (CRIU's own, root's) go on
    `add rule ${TABLE} loopback_output ${family} daddr ${loopback} tcp dport @${OWN_CLIENTS_ONLY} tcp flags & (syn | ack) == syn reject with tcp reset`,
  ];
  return [
    `add table ${TABLE}`,
    `add set ${TABLE} ${PORTS} { type inet_service; flags timeout; }`,
    `add set ${TABLE} ${OWN_CLIENTS_ONLY} { type inet_service; flags timeout; }`,
    `add set ${TABLE} ${ADMITTED} { type inet_service . inet_service; flags timeout; }`,
    `add chain ${TABLE} loopback_output { type filter hook output priority filter; policy accept; }`,
    `flush chain ${TABLE} loopback_output`,
    ...output('ip', '127.0.0.0/8'),
    ...output('ip6', '::1'),
    // and what comes to loopback from outside (a host with route_localnet set) never reaches them
    `add chain ${TABLE} loopback_input { type filter hook input priority filter; policy accept; }`,
    `flush chain ${TABLE} loopback_input`,
    `add rule ${TABLE} loopback_input iifname != "lo" ip daddr 127.0.0.0/8 tcp dport @${PORTS} drop`,
    `add rule ${TABLE} loopback_input iifname != "lo" ip6 daddr ::1 tcp dport @${PORTS} drop`,
  ];
}

function pickOptions(options: LoopbackGuardOptions, excluding: ReadonlySet<number> = new Set()): { excluding: ReadonlySet<number>; unprivilegedPortStart?: string } {
  return { excluding, ...(options.unprivilegedPortStart ? { unprivilegedPortStart: options.unprivilegedPortStart } : {}) };
}

function isPort(port: number): boolean {
  return Number.isInteger(port) && port >= 1 && port <= 65535;
}

function connectFrom(port: number, clientPort: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ port, host: '127.0.0.1', localAddress: '127.0.0.1', localPort: clientPort });
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

function runNft(nft: string, args: readonly string[], input: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = execFile(nft, args, { timeout: 10_000 }, (error, _stdout, stderr) => {
      if (!error) return resolve();
      const missing = (error as NodeJS.ErrnoException).code === 'ENOENT';
      reject(new LoopbackGuardError(missing ? `${nft} not found: haul needs nftables (apt install nftables) to keep local users off CRIU's page server` : `${nft} ${args.join(' ')} failed: ${stderr.trim() || error.message}`, { cause: error }));
    });
    child.stdin?.on('error', () => {}); // an nft that exits early must not crash haul
    child.stdin?.end(input);
  });
}
