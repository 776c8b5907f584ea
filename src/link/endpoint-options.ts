import type { Identity } from './identity.js';
import type { PairingService } from './pairing.js';
import type { LinkLimits } from './session.js';
import type { TrustStore } from './trust-store.js';

/**
 * The application's part of the handshake: what this side says of itself, and the check of what
 * the peer said. The link carries both as bytes and knows nothing of their meaning; a check that
 * returns a reason refuses the link (the listener tells the dialler why, the dialler gives up).
 */
export interface ApplicationHandshake {
  readonly hello: Uint8Array;
  /** `side`: which end of the link this one is. Undefined to go on, else why the two cannot work together. */
  check(peerHello: Buffer, side: 'dialer' | 'listener'): string | undefined;
  /**
   * Channel kinds whose bytes the application acts on only once the channel's end digest matched
   * (it may store them as they come): on a plain link the CRC of their DATA frames covers the header
   * alone (frame.ts). Both ends must say the same; the application's own protocol version keeps
   * ends that do not apart.
   */
  readonly crcFreeKinds?: ReadonlySet<number>;
}

/** What both ends of a link are configured with. */
export interface EndpointOptions {
  /** This host's key and certificate; required unless insecure. */
  readonly identity?: Identity;
  /** The peers this host accepts, by certificate fingerprint; required unless insecure. */
  readonly trust?: TrustStore;
  /** Plain WebSocket without TLS or authentication: only on loopback, only when asked for. */
  readonly insecure?: boolean;
  readonly application: ApplicationHandshake;
  /** How long a session waits for a dropped connection to come back (default 30 s). */
  readonly resumeWindowMs?: number;
  /** Keepalive ping interval; a peer silent for three of them is dead (default 5 s). */
  readonly keepaliveMs?: number;
  /** What each session lets its peer make it hold (default DEFAULT_LINK_LIMITS, session.ts). */
  readonly limits?: Partial<LinkLimits>;
  /** A listener that answers pairing requests (pairing.ts) with a secret this host issued. */
  readonly pairing?: PairingService;
}

export const DEFAULT_RESUME_WINDOW_MS = 30_000;
export const DEFAULT_KEEPALIVE_MS = 5_000;
const HANDSHAKE_TIMEOUT_MS = 10_000;
export { HANDSHAKE_TIMEOUT_MS };

export function isLoopback(address: string): boolean {
  return address === 'localhost' || address === '::1' || address === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(address);
}

export function requireSecurity(options: EndpointOptions, address: string): { identity?: Identity; trust?: TrustStore } {
  if (options.insecure) {
    if (!isLoopback(address)) throw new Error(`--insecure (no TLS, no authentication) is refused on ${address}: only loopback addresses may go without TLS`);
    return {};
  }
  if (!options.identity || !options.trust) throw new Error('a TLS link needs this host\'s identity and trust store');
  return { identity: options.identity, trust: options.trust };
}
