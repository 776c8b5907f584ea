import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { randomInt } from 'node:crypto';

/**
 * The lowest port haul picks: below it lie the services a host is most likely to run (ssh, smtp,
 * dns, http, imap, ldap, https, ...), which a port taken for a minute could keep from starting.
 */
const LOWEST_PICKED = 600;
/** The kernel's own default for net.ipv4.ip_unprivileged_port_start. */
const UNPRIVILEGED_DEFAULT = 1024;
const TRIES = 32;

/** Where the kernel says which ports only a privileged process may bind. */
export const UNPRIVILEGED_PORT_START = '/proc/sys/net/ipv4/ip_unprivileged_port_start';

export interface PickedPort {
  readonly port: number;
  /**
   * Why no one but root is kept from binding it first, when that is so: the host lets every user
   * bind the ports haul would pick (net.ipv4.ip_unprivileged_port_start lowered). Such a user can
   * then make the migration fail, not take it over: who connects is checked apart from this.
   */
  readonly bindableByAnyone?: string;
}

/**
 * A loopback TCP port free a moment ago, for a listener haul must name before the program that
 * listens on it starts (CRIU takes a port number, not a socket). It lies below
 * net.ipv4.ip_unprivileged_port_start, so between haul picking it and CRIU binding it no local user
 * but root can bind it first (a user who did would make CRIU fail to listen, and the move with it).
 */
export async function pickPrivilegedLoopbackPort(options: { readonly unprivilegedPortStart?: string; readonly excluding?: ReadonlySet<number> } = {}): Promise<PickedPort> {
  const start = await unprivilegedPortStart(options.unprivilegedPortStart ?? UNPRIVILEGED_PORT_START);
  const excluding = options.excluding ?? new Set<number>();
  const highest = Math.min(start, UNPRIVILEGED_DEFAULT) - 1;
  if (highest >= LOWEST_PICKED) {
    for (let attempt = 0; attempt < TRIES; attempt++) {
      const port = randomInt(LOWEST_PICKED, highest + 1);
      if (!excluding.has(port) && (await isFree(port))) return { port };
    }
  }
  // nothing privileged to pick, or every try was taken: a port any user could bind first
  const port = await anyFreePort();
  const bindableByAnyone = highest >= LOWEST_PICKED
    ? `no free port in ${LOWEST_PICKED}-${highest} after ${TRIES} tries`
    : `net.ipv4.ip_unprivileged_port_start is ${start}: every user may bind the ports haul gives CRIU`;
  return { port, bindableByAnyone };
}

async function unprivilegedPortStart(path: string): Promise<number> {
  const text = await readFile(path, 'utf8').catch(() => undefined);
  const value = text === undefined ? NaN : Number(text.trim());
  // a kernel without the sysctl (before 4.11) keeps the fixed rule: below 1024
  return Number.isInteger(value) && value >= 0 ? value : UNPRIVILEGED_DEFAULT;
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
