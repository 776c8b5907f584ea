import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { randomInt } from 'node:crypto';

/**
 * The lowest port haul picks: below it lie the services a host is most likely to run (ssh, smtp,
 * dns, http, imap, ldap, https, ...), which a port taken for a minute could keep from starting.
 * Above it, every port /etc/services names is skipped as well.
 */
const LOWEST_PICKED = 600;
/** The kernel's own default for net.ipv4.ip_unprivileged_port_start. */
const UNPRIVILEGED_DEFAULT = 1024;
const TRIES = 32;

/** Where the kernel says which ports only a privileged process may bind. */
export const UNPRIVILEGED_PORT_START = '/proc/sys/net/ipv4/ip_unprivileged_port_start';

/**
 * What a port is for: a listener CRIU binds (even ports) or the client port haul connects from
 * (odd ones), so that a client of one migration never holds the port another one's CRIU is about
 * to bind.
 */
export type PortUse = 'listener' | 'client';

export interface PickedPort {
  readonly port: number;
  /**
   * Why no one but root is kept from binding it first, when that is so: the host lets every user
   * bind the ports haul would pick (net.ipv4.ip_unprivileged_port_start lowered), or none was free.
   * Such a user can then make the migration fail, not take it over: who connects is checked apart
   * from this.
   */
  readonly bindableByAnyone?: string;
}

export interface PickOptions {
  /** Where the sysctl is read (tests point it elsewhere). */
  readonly unprivilegedPortStart?: string;
  /** Ports not to pick (tried already). */
  readonly excluding?: ReadonlySet<number>;
}

/**
 * A loopback TCP port free a moment ago, for a listener haul must name before the program that
 * listens on it starts (CRIU takes a port number, not a socket), or for haul's client of one. It
 * lies below net.ipv4.ip_unprivileged_port_start, so between haul picking it and binding it no
 * local user but root can bind it first (a user who did would make CRIU fail to listen, and the
 * move with it).
 */
export async function pickPrivilegedLoopbackPort(use: PortUse, options: PickOptions = {}): Promise<PickedPort> {
  const start = await unprivilegedPortStart(options.unprivilegedPortStart ?? UNPRIVILEGED_PORT_START);
  const excluding = options.excluding ?? new Set<number>();
  const named = await servicePorts();
  const highest = Math.min(start, UNPRIVILEGED_DEFAULT) - 1;
  const parity = use === 'listener' ? 0 : 1;
  const candidates: number[] = [];
  for (let port = LOWEST_PICKED; port <= highest; port++) if (port % 2 === parity && !named.has(port) && !excluding.has(port)) candidates.push(port);
  for (let attempt = 0; attempt < TRIES && candidates.length > 0; attempt++) {
    const [port] = candidates.splice(randomInt(candidates.length), 1) as [number];
    if (await isFree(port)) return { port };
  }
  // nothing privileged to pick, or every try was taken: a port any user could bind first
  const bindableByAnyone = highest >= LOWEST_PICKED
    ? `no free port in ${LOWEST_PICKED}-${highest} after ${TRIES} tries`
    : `net.ipv4.ip_unprivileged_port_start is ${start}: every user may bind the ports haul gives CRIU`;
  return { port: await anyFreePort(), bindableByAnyone };
}

async function unprivilegedPortStart(path: string): Promise<number> {
  const text = await readFile(path, 'utf8').catch(() => undefined);
  const value = text === undefined ? NaN : Number(text.trim());
  // a kernel without the sysctl (before 4.11) keeps the fixed rule: below 1024
  return Number.isInteger(value) && value >= 0 ? value : UNPRIVILEGED_DEFAULT;
}

/** The TCP ports this host's /etc/services names: services it may run, if not now. */
async function servicePorts(): Promise<Set<number>> {
  const text = await readFile('/etc/services', 'utf8').catch(() => '');
  const ports = new Set<number>();
  for (const line of text.split('\n')) {
    const found = /^[^#\s]+\s+(\d+)\/tcp\b/.exec(line);
    if (found) ports.add(Number(found[1]));
  }
  return ports;
}

async function isFree(port: number): Promise<boolean> {
  const server = createServer();
  const listened = await new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.listen({ port, host: '127.0.0.1', exclusive: true }, () => resolve(true));
  });
  if (listened) await new Promise<void>((resolve) => server.close(() => resolve()));
  return listened;
}

async function anyFreePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('listening socket has no TCP port');
  return address.port;
}
