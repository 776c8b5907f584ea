import type { ApplicationHandshake } from '../src/link/index.js';
import { decodeHostHello, encodeHostHello, type HostHello } from './wire/messages.js';
import { CRC_FREE_KINDS } from './wire/channels.js';

export type { HostHello };

/**
 * The version of what the engine's two sides say to each other (proxy/wire/migration.proto's
 * control messages and when each is sent). 2: the destination of `haul migrate` reports its
 * image set stored, as the plugin's always did, and the source waits for it. 3: a lazy request may
 * say `again` (the destination no longer keeps pages it handed over), and the source answers it.
 * 4: lazy pushes are a LAZY_PUSH channel, no longer PAGES, and on a plain link the frames of
 * CRC_FREE_KINDS have a CRC of their header only (proxy/wire/channels.ts).
 */
export const MIGRATION_PROTOCOL = 4;

/** What a host says of itself; the migration protocol is filled in by the handshake, and no Incus is ''. */
export type HostSelf = Omit<HostHello, 'migration_protocol' | 'incus_version'> & { readonly incus_version?: string };

/** `host` as its hello says it: the migration protocol this haul speaks, no Incus unless named. */
export function helloOf(host: HostSelf): HostHello {
  return { ...host, incus_version: host.incus_version ?? '', migration_protocol: MIGRATION_PROTOCOL };
}

/** What a version or an architecture looks like (6.0.4, 0.1.0-rc1+deb12u1, x86_64): anything else from a peer is shown quoted. */
const PLAIN_WORD = /^[0-9A-Za-z][0-9A-Za-z._+~-]{0,63}$/;

/**
 * A word a host's hello states (a version, its architecture), fit for a log line or a terminal: as
 * it is when it looks like one, '?' when empty, else quoted (JSON escapes control characters) and
 * cut to 64 characters.
 */
export function shownWord(word: string): string {
  if (word === '') return '?';
  return PLAIN_WORD.test(word) ? word : JSON.stringify(word.slice(0, 64));
}

/**
 * Why a process dumped on `source` could not be restored on `destination`, or undefined: a pairing
 * is refused only where nothing can bridge the difference, and the reason says what to change.
 */
export function compatibilityProblem(source: HostHello, destination: HostHello): string | undefined {
  if (source.migration_protocol !== destination.migration_protocol) {
    const speaks = (hello: HostHello): string => `migration protocol ${hello.migration_protocol}${hello.haul_version ? ` (haul ${shownWord(hello.haul_version)})` : ''}`;
    return `the source speaks ${speaks(source)} and the destination ${speaks(destination)}: run the same haul version on both hosts`;
  }
  if (source.page_size !== destination.page_size) {
    return `page size ${source.page_size} on the source but ${destination.page_size} on the destination`;
  }
  if (source.architecture !== destination.architecture) {
    return `a ${shownWord(source.architecture)} source cannot move processes to a ${shownWord(destination.architecture)} destination`;
  }
  // CRIU 4.1 and 4.2 restore each other's images once haul has written the pagemaps in the form
  // both read (src/criu/images/pagemap.ts): no pairing of the two is refused (README, Compatibility)
  return undefined;
}

/**
 * The link handshake's application part for a migration host: says what `self` is, and refuses a
 * peer it cannot migrate with. Sessions go from the dialler (the source) to the listener.
 */
export function hostHandshake(host: HostSelf): ApplicationHandshake {
  const self = helloOf(host);
  return {
    hello: encodeHostHello(self),
    crcFreeKinds: CRC_FREE_KINDS,
    check(peerHello, side) {
      let peer: HostHello;
      try {
        peer = decodeHostHello(peerHello);
      } catch (error) {
        return `the peer's hello is not a haul host's (${error instanceof Error ? error.message : String(error)})`;
      }
      return side === 'dialer' ? compatibilityProblem(self, peer) : compatibilityProblem(peer, self);
    },
  };
}

/** What the peer said of itself in the handshake (a dialled link's `peer`, a listener's session event). */
export function peerHost(hello: Buffer): HostHello {
  return decodeHostHello(hello);
}
