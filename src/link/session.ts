import { EventEmitter } from 'node:events';
import { FrameReader, FrameType, NO_CRC_FREE_KINDS, encodeFrameMessages, frameCrcOf, type ChannelKindCode, type Frame } from './frame.js';
import { ChannelPriority, IncomingChannel, OutgoingChannel, WindowPool, type ChannelCredit } from './channels.js';

const PRIORITIES = Object.values(ChannelPriority);
import { LinkAbortedError, LinkLimitError, LinkLimitsError, LinkProtocolError, linkReasonCode } from './link-errors.js';
import { Messages, type ChannelProgress } from './messages.js';
import { STREAM_DIGEST_SIZE } from './stream-digest.js';

/**
 * The largest window of one channel: bytes its receiver takes beyond what it has read before the
 * sender must wait for credit. A busy channel grows to it; one stream (pages) uses all of it.
 */
export const CHANNEL_WINDOW = 8 * 1024 * 1024;
/**
 * The window every channel has from its OPEN on, without being granted it: most image files and
 * any control message fit in it, so they go in one flight; a channel nobody reads holds this much.
 */
export const INITIAL_CHANNEL_WINDOW = 128 * 1024;
/** A channel's name is a file name or a label; the longest path Linux takes (PATH_MAX) is plenty. */
const MAX_CHANNEL_NAME = 4096;
/** Bytes handed to the connection and not yet written out, over all channels. */
const MAX_IN_FLIGHT = 4 * 1024 * 1024;

/**
 * What a session lets its peer make it hold. Going past maxOpenChannels or maxControlMessages aborts
 * the session with a LinkLimitError naming it (its code: link-errors.ts, LinkLimitCodes);
 * maxUnreadBytes is kept by flow control instead, and only a peer that sends past its credit
 * aborts it (HAUL_LINK_CREDIT_OVERRUN).
 */
export interface LinkLimits {
  /** The peer's channels open at once (opened and not yet reset, or ended and read out). */
  readonly maxOpenChannels: number;
  /**
   * The unread budget: the most bytes the peer's channels can hold here that the application has
   * not read, over all channels. The session grants credit only within it: each channel the peer
   * may open has its initial window set aside (maxOpenChannels × INITIAL_CHANNEL_WINDOW, which must
   * fit), and the rest is shared by the channels being read, each up to CHANNEL_WINDOW. A sender
   * that keeps to its credit waits when it is spent; it never makes the session abort.
   */
  readonly maxUnreadBytes: number;
  /** Control messages a ControlInbox keeps (it keeps every one it was sent). */
  readonly maxControlMessages: number;
}

/**
 * The channel and control-message caps are far above what a migration uses: sendImageFiles
 * (proxy/images-to-link.ts) opens one channel per image file of a dump at once, a few per process,
 * so a few hundred processes' dump is a few thousand channels, at about 5 KiB each while open; page
 * streams (proxy/pages-to-link.ts) come one after another, lazy pages use three channels, control
 * one or two per side; a migration exchanges fewer than ten control messages each way. The unread
 * budget, 1 GiB, is not a cap a migration can hit but the most memory a session's incoming bytes
 * take while the application falls behind (a destination whose disk is slow, with the plugin's
 * lazy path sending each process's pages file at once): half of it is the initial windows of
 * 4096 channels, the other half lets 64 channels being read have the largest window at once;
 * beyond that, senders wait for credit.
 */
export const DEFAULT_LINK_LIMITS: LinkLimits = Object.freeze({
  maxOpenChannels: 4096,
  maxUnreadBytes: 128 * CHANNEL_WINDOW,
  maxControlMessages: 256,
});

/** The limits a session keeps with `limits` over the defaults, or a LinkLimitsError if it cannot keep them. */
export function resolveLinkLimits(limits: Partial<LinkLimits> = {}): LinkLimits {
  const resolved = Object.freeze({ ...DEFAULT_LINK_LIMITS, ...limits });
  const initialWindows = resolved.maxOpenChannels * INITIAL_CHANNEL_WINDOW;
  if (resolved.maxUnreadBytes < initialWindows) {
    throw new LinkLimitsError(`an unread budget of ${resolved.maxUnreadBytes} bytes cannot hold the initial windows of ${resolved.maxOpenChannels} channels (${initialWindows} bytes)`);
  }
  return resolved;
}

/**
 * One connection's worth of message exchange; the session outlives it when the link resumes. It
 * carries messages whole and in order, and a frame is one message or two (frame.ts).
 */
export interface FrameTransport {
  send(message: Buffer, done: (error?: Error) => void): void;
  /**
   * Runs `sends` with what they send gathered into one write to the connection, where it can: a
   * frame's header and payload, and every frame one turn of the pump sends, cost one system call
   * and one loopback segment train instead of one per message.
   */
  batch?(sends: () => void): void;
  /** Messages and the end of the connection go to these once the session attaches. */
  deliverTo(handlers: { frame(bytes: Buffer): void; closed(reason: string): void }): void;
  close(reason: string): void;
}

export { LinkAbortedError };

interface SessionEvents {
  /**
   * A channel the peer opened. It is announced once, when its OPEN arrives, which can be right after
   * the handshake: listen before awaiting anything once the session exists.
   */
  channel: [IncomingChannel];
  aborted: [LinkAbortedError];
  closed: [];
  /** The connection went away; the session waits for the peer to resume it (or gives up: aborted). */
  detached: [string];
  /** A connection carries the session (again): its attachment count, 1 for the first. */
  attached: [number];
}

/**
 * The multiplexer: any number of channels over one connection at a time. Each outgoing frame is
 * chosen by priority (round robin among equals), each channel sends only within its peer's credit,
 * and everything sent stays replayable until acknowledged, so the session can move to a new
 * connection (resume) without losing or repeating a byte.
 */
export class LinkSession extends EventEmitter<SessionEvents> {
  private transport: FrameTransport | undefined;
  private readonly outgoing = new Map<number, OutgoingChannel>();
  private readonly incoming = new Map<number, IncomingChannel>();
  /** The peer's channels not known to have settled (pruned as the next one opens). */
  private readonly openIncoming = new Set<IncomingChannel>();
  readonly limits: LinkLimits;
  private readonly incomingCredit: ChannelCredit;
  private readonly control: Frame[] = [];
  private nextChannelId: number;
  private inFlight = 0;
  private pumpScheduled = false;
  private rotation = 0;
  private state: 'open' | 'aborted' | 'closed' = 'open';

  /**
   * `frameCrc`: guard every frame with a CRC. Plain links need it; over TLS each record is already
   * authenticated, so a TLS link turns it off (both ends decide alike from the same URL scheme).
   * `crcFreeKinds`: channel kinds whose DATA frames have a CRC of their header only, because the
   * application acts on their bytes only once the channel's end digest matched (both ends take them
   * from the same ApplicationHandshake).
   */
  constructor(
    readonly role: 'dialer' | 'listener',
    readonly sessionId: Buffer,
    private readonly frameCrc = true,
    limits: Partial<LinkLimits> = {},
    private readonly crcFreeKinds: ReadonlySet<ChannelKindCode> = NO_CRC_FREE_KINDS,
  ) {
    super();
    this.limits = resolveLinkLimits(limits);
    const initialWindows = this.limits.maxOpenChannels * INITIAL_CHANNEL_WINDOW;
    this.incomingCredit = { initialWindow: INITIAL_CHANNEL_WINDOW, maxWindow: CHANNEL_WINDOW, pool: new WindowPool(this.limits.maxUnreadBytes - initialWindows) };
    this.nextChannelId = role === 'dialer' ? 1 : 2; // odd ids are the dialler's, even ones the listener's
  }

  get isOpen(): boolean {
    return this.state === 'open';
  }

  get attached(): boolean {
    return this.transport !== undefined;
  }

  /**
   * How many connections this session has had. Unchanged and never attached since a write means
   * that write cannot have reached the peer: the session had no connection to carry it.
   */
  get attachments(): number {
    return this.attachCount;
  }
  private attachCount = 0;

  /**
   * A new channel: `kind` is the application's tag for what it carries (1-255; read here only to
   * know what a plain link's CRC covers), `priority` how its frames compete with other channels'
   * for the connection.
   */
  openChannel(kind: ChannelKindCode, name: string, priority: ChannelPriority): OutgoingChannel {
    if (this.state !== 'open') throw new LinkAbortedError(`cannot open ${name}: the session has ended`, 'local');
    if (!Number.isInteger(kind) || kind < 1 || kind > 255) throw new RangeError(`a channel kind is 1-255, not ${kind}`);
    if (!PRIORITIES.includes(priority)) throw new RangeError(`not a channel priority: ${priority}`);
    const id = this.nextChannelId;
    this.nextChannelId += 2;
    const channel = new OutgoingChannel(id, kind, name, priority, INITIAL_CHANNEL_WINDOW, CHANNEL_WINDOW, () => this.schedulePump());
    this.outgoing.set(id, channel);
    this.schedulePump();
    return channel;
  }

  /** How far each of the peer's channels has arrived here, for the resume handshake. */
  progress(): ChannelProgress[] {
    return [...this.incoming.values()].map((channel) => channel.progress());
  }

  /**
   * Continues on a new connection; `peerProgress` is the peer's progress from the handshake. A
   * peer whose account of it cannot be true (see OutgoingChannel.resumeProblem) ends the session.
   */
  attach(transport: FrameTransport, peerProgress?: ChannelProgress[]): void {
    if (this.state !== 'open') {
      transport.close('session ended');
      return;
    }
    const problem = peerProgress && this.resumeProblem(peerProgress);
    if (!problem && peerProgress) {
      const byId = new Map(peerProgress.map((p) => [p.channel, p]));
      for (const channel of this.outgoing.values()) channel.rewind(byId.get(channel.id));
      for (const channel of this.incoming.values()) channel.resendCredit();
    }
    this.transport = transport;
    this.attachCount++;
    this.inFlight = 0;
    const reader = new FrameReader(this.frameCrc, this.crcFreeKinds);
    transport.deliverTo({
      frame: (bytes) => this.receive(reader, bytes, transport),
      closed: (reason) => {
        if (this.transport !== transport) return;
        this.transport = undefined;
        if (this.state === 'open') this.emit('detached', reason);
      },
    });
    // the peer hears why on the connection it came with
    if (problem) return this.fail(new LinkProtocolError(`refused the resume: ${problem}`));
    this.schedulePump();
    this.emit('attached', this.attachCount);
  }

  private resumeProblem(peerProgress: ChannelProgress[]): string | undefined {
    const byId = new Map<number, ChannelProgress>();
    for (const progress of peerProgress) {
      if (byId.has(progress.channel)) return `the peer gave its progress on channel ${progress.channel} twice`;
      if (!this.outgoing.has(progress.channel)) return `the peer gave its progress on channel ${progress.channel}, which this side never opened`;
      byId.set(progress.channel, progress);
    }
    for (const channel of this.outgoing.values()) {
      const problem = channel.resumeProblem(byId.get(channel.id));
      if (problem) return problem;
    }
    return undefined;
  }

  /**
   * Ends the session with an error that reaches the peer, and fails every channel. `cause` is the
   * error behind the reason, if any; a link error's code goes to the peer with the reason.
   */
  abort(reason: string, cause?: unknown): void {
    if (this.state !== 'open') return;
    const code = linkReasonCode(cause);
    this.finishWith('aborted', new LinkAbortedError(reason, 'local', code, cause), {
      type: FrameType.ABORT, kind: 0, channel: 0, offset: 0n, payload: Messages.abort.encode({ reason, origin: this.role, code: code ?? '' }),
    });
  }

  /** Ends the session because its work is done. */
  close(): void {
    if (this.state !== 'open') return;
    this.finishWith('closed', undefined, { type: FrameType.CLOSE, kind: 0, channel: 0, offset: 0n, payload: Buffer.alloc(0) });
  }

  /** Whatever goes wrong inside the session ends it, with the error as the cause: nothing escapes into an event handler. */
  private fail(error: unknown): void {
    this.abort(error instanceof Error ? error.message : String(error), error);
  }

  private finishWith(state: 'aborted' | 'closed', error: LinkAbortedError | undefined, frame: Frame): void {
    this.state = state;
    const transport = this.transport;
    this.transport = undefined;
    if (transport) {
      const closeTransport = (): void => transport.close(state === 'closed' ? 'session closed' : 'session aborted');
      try {
        sendFrame(transport, encodeFrameMessages(frame, this.frameCrc), closeTransport);
      } catch {
        closeTransport(); // a broken transport: the peer learns from the connection's end
      }
    }
    this.failChannels(error);
    if (error) this.emit('aborted', error);
    else this.emit('closed');
  }

  private failChannels(error: Error | undefined): void {
    for (const channel of this.incoming.values()) if (!channel.ended) channel.fail(error?.message ?? 'the session closed before this channel ended');
    for (const channel of this.outgoing.values()) if (!channel.endSent) channel.writable.destroy(error ?? new Error('the session closed'));
  }

  private receive(reader: FrameReader, bytes: Buffer, from: FrameTransport): void {
    if (from !== this.transport || this.state !== 'open') return;
    try {
      const frame = reader.read(bytes);
      if (frame) this.handle(frame);
    } catch (error) {
      this.fail(error);
    }
  }

  private handle(frame: Frame): void {
    switch (frame.type) {
      case FrameType.OPEN: {
        if ((frame.channel % 2 === 1) !== (this.role === 'listener') || frame.channel === 0) {
          throw new LinkProtocolError(`the peer opened channel ${frame.channel}, which is not one of its ids`);
        }
        if (this.incoming.has(frame.channel)) return; // replayed after a reconnect
        if (frame.kind === 0) throw new LinkProtocolError(`channel ${frame.channel} opened without a kind`);
        if (frame.payload.length > MAX_CHANNEL_NAME) throw new LinkProtocolError(`channel ${frame.channel} opened with a ${frame.payload.length}-byte name, at most ${MAX_CHANNEL_NAME}`);
        this.admitChannel(frame.channel);
        const channel = new IncomingChannel(
          frame.channel,
          frame.kind,
          frame.payload.toString('utf8'),
          this.incomingCredit,
          (acked, limit) => this.sendControl(creditFrame(frame.channel, acked, limit)),
          (error) => this.fail(error),
        );
        this.incoming.set(frame.channel, channel);
        this.openIncoming.add(channel);
        this.emit('channel', channel);
        return;
      }
      case FrameType.DATA: {
        const channel = this.incomingChannel(frame);
        // the kind decides what a plain link's CRC of the frame covers (crcFreeKinds): a frame that names
        // another kind than its channel's OPEN did is damaged or forged, never data
        if (frame.kind !== channel.kind) throw new LinkProtocolError(`data of kind ${frame.kind} for channel ${frame.channel}, which opened as kind ${channel.kind}`);
        return channel.data(frame.offset, frame.payload);
      }
      case FrameType.END:
        if (frame.payload.length !== STREAM_DIGEST_SIZE) throw new LinkProtocolError(`channel ${frame.channel} ended with a ${frame.payload.length}-byte digest`);
        return this.incomingChannel(frame).finish(frame.offset, frame.payload);
      case FrameType.RESET:
        return this.incomingChannel(frame).fail(frame.payload.toString('utf8'));
      case FrameType.CREDIT: {
        const channel = this.outgoing.get(frame.channel);
        if (!channel || frame.payload.length !== 8) throw new LinkProtocolError(`credit for unknown channel ${frame.channel}`);
        channel.credit(frame.offset, frame.payload.readBigUInt64LE(0));
        return this.schedulePump();
      }
      case FrameType.ABORT: {
        const { reason, code } = Messages.abort.decode(frame.payload);
        this.state = 'aborted';
        const error = new LinkAbortedError(reason, 'peer', linkReasonCode(code));
        this.transport?.close('peer aborted');
        this.transport = undefined;
        this.failChannels(error);
        this.emit('aborted', error);
        return;
      }
      case FrameType.CLOSE:
        this.state = 'closed';
        this.transport?.close('peer closed');
        this.transport = undefined;
        this.failChannels(undefined);
        this.emit('closed');
        return;
      default:
        throw new LinkProtocolError(`unexpected frame type 0x${frame.type.toString(16)} in a running session`);
    }
  }

  // A channel keeps its place until it settles: its initial window is set aside in the unread
  // budget for each of maxOpenChannels places, and one ended but unread still holds its bytes.
  private admitChannel(id: number): void {
    for (const channel of this.openIncoming) if (channel.settled) this.openIncoming.delete(channel);
    const max = this.limits.maxOpenChannels;
    if (this.openIncoming.size >= max) throw new LinkLimitError('openChannels', max, `the peer opened channel ${id} with ${this.openIncoming.size} of its channels open`);
  }

  private incomingChannel(frame: Frame): IncomingChannel {
    const channel = this.incoming.get(frame.channel);
    if (!channel) throw new LinkProtocolError(`frame for unknown channel ${frame.channel}`);
    return channel;
  }

  private sendControl(frame: Frame): void {
    if (this.state !== 'open') return; // the channels an ended session fails give back their credit: to nobody
    this.control.push(frame);
    this.schedulePump();
  }

  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    try {
      this.pumpFrames();
    } catch (error) {
      this.fail(error);
    }
  }

  private pumpFrames(): void {
    const transport = this.transport;
    if (!transport) return;
    if (transport.batch) transport.batch(() => this.sendFrames(transport));
    else this.sendFrames(transport);
  }

  private sendFrames(transport: FrameTransport): void {
    while (this.transport === transport && this.inFlight < MAX_IN_FLIGHT) {
      const frame = this.control.shift() ?? this.nextChannelFrame();
      if (!frame) return;
      const messages = encodeFrameMessages(frame, frameCrcOf(frame, this.frameCrc, this.crcFreeKinds));
      const bytes = messages.reduce((sum, message) => sum + message.length, 0);
      this.inFlight += bytes;
      sendFrame(transport, messages, () => {
        if (this.transport !== transport) return;
        this.inFlight -= bytes;
        this.schedulePump();
      });
    }
  }

  // Highest priority first; among channels of one priority, take turns.
  private nextChannelFrame(): Frame | undefined {
    const channels = [...this.outgoing.values()];
    if (channels.length === 0) return undefined;
    this.rotation = (this.rotation + 1) % channels.length;
    for (const priority of PRIORITIES) {
      for (let i = 0; i < channels.length; i++) {
        const channel = channels[(this.rotation + i) % channels.length]!;
        if (channel.priority !== priority) continue;
        const frame = channel.nextFrame();
        if (frame) return frame;
      }
    }
    return undefined;
  }
}

/** A frame's messages, back to back; `done` is the last one's callback: it says what became of the frame. */
function sendFrame(transport: FrameTransport, messages: readonly Buffer[], done: (error?: Error) => void): void {
  messages.forEach((message, i) => transport.send(message, i === messages.length - 1 ? done : () => {}));
}

function creditFrame(channel: number, acked: bigint, limit: bigint): Frame {
  const payload = Buffer.alloc(8);
  payload.writeBigUInt64LE(limit, 0);
  return { type: FrameType.CREDIT, kind: 0, channel, offset: acked, payload };
}
