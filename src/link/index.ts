/**
 * The haul link: one authenticated WebSocket connection per session, carrying framed channels with
 * credit, priorities, digests, resumption and keepalive. What the channels mean is the caller's.
 */
export { dialLink, type DialedLink } from './dialer.js';
export { LinkListener } from './listener.js';
export { LinkSession, DEFAULT_LINK_LIMITS, type LinkLimits } from './session.js';
export { ChannelPriority, type IncomingChannel, type OutgoingChannel } from './channels.js';
export type { ChannelKindCode } from './frame.js';
export { DEFAULT_RESUME_WINDOW_MS, type ApplicationHandshake, type EndpointOptions } from './endpoint-options.js';
export { PROTOCOL_VERSION } from './handshake.js';
export { fingerprintOf, loadIdentity, loadOrCreateIdentity, type Identity } from './identity.js';
export { TrustStore, normaliseFingerprint, type TrustedPeer } from './trust-store.js';
export { PairingError, PairingOffers, decodePairingToken, encodePairingToken, joinPeer, peerName, type PairingService, type PairingToken } from './pairing.js';
export { LinkAbortedError, LinkIntegrityError, LinkLimitError, LinkLimitsError, LinkProtocolError, linkReasonCode, type LinkAbortReasonCode } from './link-errors.js';
