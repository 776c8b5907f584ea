import { Readable, Writable } from 'node:stream';
import { FrameType, type ChannelKindCode, type Frame } from './frame.js';
import { LinkIntegrityError, LinkLimitError, LinkProtocolError } from './link-errors.js';
import type { ChannelProgress } from './messages.js';
import { STREAM_DIGEST, streamDigest, type StreamDigest } from './stream-digest.js';

export { LinkIntegrityError };

/**
 * The largest DATA payload. Larger frames cost less per byte; a lazy-page answer still waits behind
 * at most what is already handed to the connection (MAX_IN_FLIGHT), not behind queued bulk frames.
 */
export const DATA_CHUNK = 256 * 1024;

/** Bytes a channel's writer may hand over ahead of what the connection has taken. */
const PENDING_LIMIT = 4 * 1024 * 1024;

/**
 * How a channel's frames go out when several are ready: every ready frame of a lower priority before
 * any of a higher one, channels of one priority taking turns.
 */
export const ChannelPriority = { FIRST: 0, SECOND: 1, LAST: 2 } as const;
export type ChannelPriority = (typeof ChannelPriority)[keyof typeof ChannelPriority];


/**
 * The sending half of a channel. Its writable takes bytes from the application and holds them
 * until the peer has credit for them; sent bytes stay in a replay buffer until the peer
 * acknowledges them, so a dropped connection loses nothing. Memory is bounded by the credit window.
 */
export class OutgoingChannel {
  readonly writable: Writable;
  private readonly pending: Array<{ bytes: Buffer; done: () => void }> = [];
  private pendingBytes = 0;
  private readonly replay: Buffer[] = [];
  private replayStart = 0n; // stream offset of replay[0]
  private framedEnd = 0n; // bytes moved from pending into the stream (digest covers them)
  private sent = 0n; // bytes framed on the current connection
  private sentEver = 0n; // the furthest any connection got: no peer can have more
  private readonly maxWindow: bigint;
  private limit: bigint;
  private acked = 0n;
  private readonly digest: StreamDigest = streamDigest();
  private finalDigest: Buffer | undefined;
  private ending: (() => void) | undefined;
  private wasReset = false;
  openSent = false;
  endSent = false;
  peerEnded = false;
  reset: string | undefined;

  constructor(
    readonly id: number,
    readonly kind: ChannelKindCode,
    readonly name: string,
    /** Lower goes first when frames of several channels are ready (ChannelPriority). */
    readonly priority: ChannelPriority,
    /** Credit the peer gives every channel when it opens, without being asked. */
    initialCredit: number,
    /** The most the peer may grant beyond what it acknowledged. */
    maxWindow: number,
    private readonly wake: () => void,
  ) {
    this.maxWindow = BigInt(maxWindow);
    this.limit = BigInt(initialCredit);
    this.writable = new Writable({
      highWaterMark: DATA_CHUNK,
      write: (chunk: Buffer, _encoding, done) => {
        if (chunk.length === 0) return done();
        // the writer may run ahead of the connection by up to PENDING_LIMIT bytes, so framing never
        // waits for it to come back with the next chunk
        this.pendingBytes += chunk.length;
        const ahead = this.pendingBytes <= PENDING_LIMIT;
        this.pending.push({ bytes: chunk, done: ahead ? () => {} : () => done() });
        if (ahead) done();
        this.wake();
      },
      final: (done) => {
        this.ending = () => done();
        this.wake();
      },
      destroy: (error, done) => {
        if (error && !this.endSent) {
          this.reset = error.message;
          this.wake();
        }
        done(error);
      },
    });
    // a session that ends fails its channels; whoever writes sees that in its callbacks, and a
    // channel nobody listens to must not take the process down with it
    this.writable.on('error', () => {});
  }

  /** The next frame this channel may send now, or undefined. */
  nextFrame(): Frame | undefined {
    if (this.reset !== undefined) {
      const reason = this.reset;
      this.reset = undefined;
      this.endSent = true;
      this.wasReset = true;
      return { type: FrameType.RESET, kind: this.kind, channel: this.id, offset: this.sent, payload: Buffer.from(reason) };
    }
    if (!this.openSent) {
      this.openSent = true;
      return { type: FrameType.OPEN, kind: this.kind, channel: this.id, offset: 0n, payload: Buffer.from(this.name) };
    }
    if (this.sent < this.framedEnd || this.pending.length > 0) {
      const room = this.limit - this.sent;
      if (room <= 0n) return undefined;
      if (this.sent === this.framedEnd) this.frameFromPending();
      const payload = this.slice(this.sent, Math.min(DATA_CHUNK, Number(room)));
      const frame: Frame = { type: FrameType.DATA, kind: this.kind, channel: this.id, offset: this.sent, payload };
      this.sent += BigInt(payload.length);
      if (this.sent > this.sentEver) this.sentEver = this.sent;
      return frame;
    }
    if (this.ending && !this.endSent) {
      this.finalDigest ??= this.digest.digest();
      this.endSent = true;
      const ended = this.ending;
      queueMicrotask(ended);
      return { type: FrameType.END, kind: this.kind, channel: this.id, offset: this.framedEnd, payload: this.finalDigest };
    }
    return undefined;
  }

  // Moves the next written chunk into the stream: it is hashed once, kept for replay, and the
  // writer is told it may write more.
  private frameFromPending(): void {
    const next = this.pending.shift();
    if (!next) return;
    this.pendingBytes -= next.bytes.length;
    this.digest.update(next.bytes);
    this.replay.push(next.bytes);
    this.framedEnd += BigInt(next.bytes.length);
    next.done();
  }

  private slice(from: bigint, max: number): Buffer {
    let skip = Number(from - this.replayStart);
    for (const chunk of this.replay) {
      if (skip < chunk.length) return chunk.subarray(skip, skip + Math.min(max, chunk.length - skip));
      skip -= chunk.length;
    }
    throw new Error(`channel ${this.id}: offset ${from} is not in the replay buffer`);
  }

  /**
   * The peer has `acked` bytes and takes up to `limit`. A receiver grants at most the largest window
   * beyond what it has (IncomingChannel.maybeCredit); more would let the replay buffer, which holds
   * everything not yet acknowledged, grow without bound.
   */
  credit(acked: bigint, limit: bigint): void {
    if (acked > this.sent) throw new LinkProtocolError(`channel ${this.id}: the peer acknowledged ${acked} bytes, but only ${this.sent} were sent`);
    if (acked < this.acked) return; // queued before a resume, which acknowledged more
    if (limit > acked + this.maxWindow) {
      throw new LinkLimitError('credit', Number(this.maxWindow), `channel ${this.id}: the peer granted credit up to ${limit} with ${acked} bytes acknowledged`);
    }
    this.acknowledge(acked);
    if (limit > this.limit) this.limit = limit;
  }

  private acknowledge(acked: bigint): void {
    this.acked = acked;
    while (this.replay.length > 0 && this.replayStart + BigInt(this.replay[0]!.length) <= acked) {
      this.replayStart += BigInt(this.replay.shift()!.length);
    }
  }

  /**
   * What is wrong with the peer's account of this channel in a resume handshake, if anything: it
   * cannot have more than was ever sent, less than it acknowledged, or an end that was never sent.
   */
  resumeProblem(progress: ChannelProgress | undefined): string | undefined {
    const channel = `channel ${this.id} (${this.name})`;
    if (!progress) {
      return this.acked > 0n ? `the peer no longer knows ${channel}, of which it had acknowledged ${this.acked} bytes` : undefined;
    }
    if (progress.received > this.sentEver) return `the peer claims ${progress.received} bytes of ${channel}, but only ${this.sentEver} were ever sent`;
    if (progress.received < this.acked) return `the peer claims ${progress.received} bytes of ${channel}, but had acknowledged ${this.acked}`;
    if (progress.ended && !this.endSent) return `the peer claims ${channel} ended, but its end was never sent`;
    if (progress.ended && !this.wasReset && progress.received !== this.framedEnd) {
      return `the peer claims ${channel} ended after ${progress.received} bytes, but it ends after ${this.framedEnd}`;
    }
    return undefined;
  }

  /**
   * After a reconnect: resend whatever the peer does not have (no progress: not even the OPEN).
   * The progress must have passed resumeProblem.
   */
  rewind(progress: ChannelProgress | undefined): void {
    if (!progress) {
      this.openSent = false;
      this.rewindTo(0n);
    } else {
      this.rewindTo(progress.received);
    }
    if (!progress?.ended && this.endSent && this.finalDigest) {
      this.endSent = false;
      this.ending = () => {};
    }
  }

  private rewindTo(received: bigint): void {
    this.acknowledge(received);
    this.sent = received;
  }
}

/**
 * What the peer's channels on one session may hold beyond their initial windows, shared: the
 * session's unread budget less an initial window for every channel the peer may have open. A
 * channel borrows from it once it is busy (IncomingChannel.resizeWindow) and gives it back as the
 * bytes it was granted are read after its end. No channel's initial window comes from here, so a
 * channel whose reader reads can always go on, however many others sit full and unread.
 */
export class WindowPool {
  private lent = 0;

  constructor(readonly size: number) {}

  /** A channel that holds `held` bytes of the pool asks for `wanted` instead; it gets what is free of that, and holds it. */
  resize(held: number, wanted: number): number {
    const holds = Math.min(wanted, this.size - this.lent + held);
    this.lent += holds - held;
    return holds;
  }
}

/** The credit an incoming channel grants, the same for every channel of a session. */
export interface ChannelCredit {
  /** The window every channel has from its OPEN on: its sender uses it without being granted it. */
  readonly initialWindow: number;
  /** The largest window a channel grows to (and the most its sender accepts beyond what is acknowledged). */
  readonly maxWindow: number;
  /** Where a channel's window beyond its initial one comes from. */
  readonly pool: WindowPool;
}

/** A channel's readable, which says when the application took bytes from it: then the channel may grant more. */
class ChannelReadable extends Readable {
  constructor(
    pull: () => void,
    private readonly taken: () => void,
  ) {
    super({ highWaterMark: DATA_CHUNK, read: pull });
  }

  // every way of reading (read(), 'data' in flowing mode, pipe, async iteration) takes buffered
  // bytes through read(); bytes pushed straight to a flowing reader never wait in the buffer
  override read(size?: number): unknown {
    const chunk: unknown = super.read(size);
    if (chunk !== null) this.taken();
    return chunk;
  }
}

/**
 * The receiving half of a channel. Bytes go to the readable in order, exactly once; its end comes
 * only after the digest the sender sent matches what arrived, so nothing is used as complete
 * before it is proven whole. The sender may send only as far as this side granted: the initial
 * window, then each CREDIT's limit, which is what the application has read plus the channel's
 * window; so the channel holds at most its window unread. The window is the initial one until the
 * application has read that much, which makes the channel a busy one: then it grows to the largest,
 * as far as the session's pool has room. A channel nobody reads costs its initial window; control
 * messages and most image files never need more.
 */
export class IncomingChannel {
  readonly readable: Readable;
  private readonly queue: Buffer[] = [];
  private received = 0n;
  private delivered = 0n; // handed to the readable: the application has read all but what its buffer holds
  private granted: bigint; // the furthest the sender may send
  private lastAcked = 0n;
  private borrowed = 0; // of the window, what is beyond the initial one, from the pool
  private readonly digest: StreamDigest = streamDigest();
  private wanted = false;
  private failed = false;
  private end: { offset: bigint; digest: Buffer } | undefined;
  ended = false;

  constructor(
    readonly id: number,
    readonly kind: ChannelKindCode,
    readonly name: string,
    private readonly credit: ChannelCredit,
    private readonly sendCredit: (acked: bigint, limit: bigint) => void,
    private readonly onIntegrityFailure: (error: Error) => void,
  ) {
    this.granted = BigInt(credit.initialWindow);
    this.readable = new ChannelReadable(
      () => {
        this.wanted = true;
        this.flush();
      },
      () => this.maybeCredit(),
    );
    // readers see a failed channel through their iterator or pipeline; an unread one must not crash
    this.readable.on('error', () => {});
    // a readable destroyed before its end has no reader: what still comes is dropped, and the
    // window it borrowed goes back to the pool
    this.readable.once('close', () => {
      this.queue.length = 0;
      this.maybeCredit();
    });
  }

  progress(): ChannelProgress {
    return { channel: this.id, received: this.received, ended: this.ended };
  }

  /** Bytes held here that the stream has not taken yet. */
  queuedBytes(): number {
    return this.queue.reduce((sum, chunk) => sum + chunk.length, 0);
  }

  /** Bytes that arrived and the application has not read: queued here, or in the stream's buffer. */
  unread(): bigint {
    return this.received - this.consumed();
  }

  /** No byte of the peer's is held here and none can come any more: the channel was reset, or ended and was read out. */
  get settled(): boolean {
    return this.failed || (this.ended && this.unread() === 0n);
  }

  /** What the application has read, or, once nobody reads any more, everything that came: it is dropped. */
  private consumed(): bigint {
    if (this.discarding) return this.received;
    return this.delivered - BigInt(this.readable.readableLength);
  }

  private get discarding(): boolean {
    return this.failed || this.readable.destroyed;
  }

  private get window(): number {
    return this.credit.initialWindow + this.borrowed;
  }

  data(offset: bigint, payload: Buffer): void {
    if (this.end) throw new LinkProtocolError(`channel ${this.id}: data after its end`);
    const end = offset + BigInt(payload.length);
    if (offset > this.received) throw new LinkProtocolError(`channel ${this.id}: bytes from ${offset} missing (have ${this.received})`);
    if (end <= this.received) return; // replayed after a reconnect, already here
    if (end > this.granted) {
      throw new LinkProtocolError(`channel ${this.id}: the sender sent up to byte ${end}, past its credit of ${this.granted}`, { code: 'HAUL_LINK_CREDIT_OVERRUN' });
    }
    const fresh = payload.subarray(Number(this.received - offset));
    this.received = end;
    // a reset channel has no reader any more: what its sender had on the way is dropped
    if (this.failed) return this.maybeCredit();
    // the digest still covers bytes nobody reads, so the end the sender proves stays true
    this.digest.update(fresh);
    if (this.readable.destroyed) return this.maybeCredit();
    this.queue.push(fresh);
    this.flush();
  }

  finish(offset: bigint, digest: Buffer): void {
    if (this.end) return; // END replayed after a reconnect
    if (offset !== this.received) throw new LinkProtocolError(`channel ${this.id}: ends at ${offset} but ${this.received} bytes arrived`);
    this.end = { offset, digest };
    this.flush();
  }

  fail(reason: string): void {
    this.ended = true;
    this.failed = true;
    this.queue.length = 0;
    this.readable.destroy(new Error(`the sender reset channel ${this.name}: ${reason}`));
  }

  private flush(): void {
    while (this.wanted && this.queue.length > 0) {
      const chunk = this.queue.shift()!;
      this.delivered += BigInt(chunk.length);
      this.wanted = this.readable.push(chunk);
    }
    if (this.queue.length === 0 && this.end && !this.ended) {
      this.ended = true;
      const actual = this.digest.digest();
      if (!actual.equals(this.end.digest)) {
        const error = new LinkIntegrityError(`channel ${this.name}: ${STREAM_DIGEST} ${actual.toString('hex')} of the bytes received differs from the sender's ${this.end.digest.toString('hex')}`);
        this.queue.length = 0;
        this.readable.destroy(error);
        this.onIntegrityFailure(error);
        return;
      }
      this.readable.push(null);
    }
    this.maybeCredit();
  }

  /**
   * Sends a CREDIT once the limit can move a quarter window on, or a quarter window arrived since
   * the last acknowledgement (the sender frees its replay buffer by it). The limit never goes
   * back: a sender may already be using it.
   */
  private maybeCredit(force = false): void {
    const consumed = this.consumed();
    this.resizeWindow(consumed);
    const limit = this.end ? this.granted : consumed + BigInt(this.window);
    const step = BigInt(this.window) / 4n;
    if (force || limit - this.granted >= step || this.received - this.lastAcked >= step) {
      if (limit > this.granted) this.granted = limit;
      this.lastAcked = this.received;
      this.sendCredit(this.received, this.granted);
    }
  }

  /**
   * Grows a busy channel's window towards the largest, as far as the pool has room (again at each
   * call while it has not); gives back what it borrowed once no more bytes can come, as they are
   * read. It keeps what it granted and is not read yet: the sender may have sent it.
   */
  private resizeWindow(consumed: bigint): void {
    const { initialWindow, maxWindow, pool } = this.credit;
    const closed = this.end !== undefined || this.discarding;
    const owed = Math.max(0, Number((closed ? this.received : this.granted) - consumed) - initialWindow);
    const busy = consumed >= BigInt(initialWindow);
    const wanted = closed ? 0 : busy ? maxWindow - initialWindow : 0;
    this.borrowed = pool.resize(this.borrowed, Math.max(owed, wanted));
  }

  /** After a reconnect: a credit frame may have been lost with the old connection. */
  resendCredit(): void {
    this.maybeCredit(true);
  }
}
