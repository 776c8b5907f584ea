/**
 * The link's errors. Each carries a stable `code`, so callers and tests tell them apart without
 * reading their messages, and the error it wraps as `cause`.
 */

/** A cap on what one session may hold, each with the code its violation carries. */
export const LinkLimitCodes = {
  /** The peer's channels open at once (not yet reset, or ended and read out). */
  openChannels: 'HAUL_LINK_LIMIT_OPEN_CHANNELS',
  /** Control messages from the peer kept by a control inbox. */
  controlMessages: 'HAUL_LINK_LIMIT_CONTROL_MESSAGES',
  /** Credit the peer grants beyond what it acknowledged plus one channel window. */
  credit: 'HAUL_LINK_LIMIT_CREDIT',
} as const;
export type LinkLimit = keyof typeof LinkLimitCodes;
export type LinkLimitCode = (typeof LinkLimitCodes)[LinkLimit];

export type LinkProtocolCode =
  /** The peer broke the protocol: a malformed frame, a lie about its progress, a frame out of place. */
  | 'HAUL_LINK_PROTOCOL'
  /**
   * The peer sent a channel's bytes past the credit this side granted it. Credit is how a session
   * keeps what its peer can make it hold within its unread budget, so only a peer that ignores
   * its credit meets this.
   */
  | 'HAUL_LINK_CREDIT_OVERRUN'
  /** The peer refused the connection in its handshake (reason in the message). */
  | 'HAUL_LINK_REFUSED'
  /** The applications on the two ends cannot work together (EndpointOptions.application said why). */
  | 'HAUL_LINK_INCOMPATIBLE'
  /** The peer's certificate is not in this host's trust store. */
  | 'HAUL_LINK_UNTRUSTED'
  /** A resume reached, or came from, a peer with another certificate than the session's own peer. */
  | 'HAUL_LINK_FOREIGN_PEER'
  | LinkLimitCode;

export class LinkProtocolError extends Error {
  override readonly name: string = 'LinkProtocolError';
  readonly code: LinkProtocolCode;
  constructor(message: string, options: { code?: LinkProtocolCode; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = options.code ?? 'HAUL_LINK_PROTOCOL';
  }
}

/** The peer went past one of the session's caps; `limit` names it and `allowed` is its value. */
export class LinkLimitError extends LinkProtocolError {
  override readonly name = 'LinkLimitError';
  declare readonly code: LinkLimitCode;
  constructor(
    readonly limit: LinkLimit,
    readonly allowed: number,
    message: string,
  ) {
    super(`${message} (the session's ${limit} cap is ${allowed})`, { code: LinkLimitCodes[limit] });
  }
}

/** Limits a session cannot keep (session.ts, LinkLimits): this side's configuration, not the peer's doing. */
export class LinkLimitsError extends RangeError {
  override readonly name = 'LinkLimitsError';
  readonly code = 'HAUL_LINK_LIMITS_INVALID';
}

/** A channel's bytes did not arrive as they were sent: the digest at its end does not match. */
export class LinkIntegrityError extends Error {
  override readonly name = 'LinkIntegrityError';
  readonly code = 'HAUL_LINK_INTEGRITY';
}

/** What ended a session, when a link error did: its code (on the peer's side too, from the ABORT frame). */
export type LinkAbortReasonCode = LinkProtocolCode | 'HAUL_LINK_INTEGRITY';
const REASON_CODES = new Set<string>(['HAUL_LINK_PROTOCOL', 'HAUL_LINK_CREDIT_OVERRUN', 'HAUL_LINK_REFUSED', 'HAUL_LINK_UNTRUSTED', 'HAUL_LINK_FOREIGN_PEER', 'HAUL_LINK_INTEGRITY', ...Object.values(LinkLimitCodes)]);

/** The code of a link error, or of one that came over the wire as text; undefined for anything else. */
export function linkReasonCode(value: unknown): LinkAbortReasonCode | undefined {
  const code = typeof value === 'string' ? value : value instanceof Error ? (value as { code?: unknown }).code : undefined;
  return typeof code === 'string' && REASON_CODES.has(code) ? (code as LinkAbortReasonCode) : undefined;
}

/**
 * The session ended with an error, on this side or the peer's (origin says which). `reasonCode`
 * says which link error ended it (undefined when the application aborted it with its own reason);
 * `cause` is that error when it happened on this side.
 */
export class LinkAbortedError extends Error {
  override readonly name = 'LinkAbortedError';
  readonly code = 'HAUL_LINK_ABORTED';
  constructor(
    readonly reason: string,
    readonly origin: 'local' | 'peer',
    readonly reasonCode?: LinkAbortReasonCode,
    cause?: unknown,
  ) {
    super(origin === 'peer' ? `the peer aborted: ${reason}` : reason, cause === undefined ? undefined : { cause });
  }
}
