import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import type { IncomingChannel } from '../../src/link/channels.js';
import { FrameReader, FrameType, encodeFrame, type Frame } from '../../src/link/frame.js';
import { LinkLimitError, LinkLimitsError, type LinkAbortedError } from '../../src/link/link-errors.js';
import { LinkListener } from '../../src/link/listener.js';
import { CHANNEL_WINDOW, DEFAULT_LINK_LIMITS, INITIAL_CHANNEL_WINDOW, LinkSession, type LinkLimits } from '../../src/link/session.js';
import { hostApp } from '../support/link-hosts.js';
import { memoryTransportPair } from '../support/memory-link.js';
import { sendControl, ControlInbox, ChannelKind, openChannel } from '../../proxy/wire/index.js';

function limitedPair(limits: Partial<LinkLimits>): { dialer: LinkSession; listener: LinkSession } {
  const id = randomBytes(16);
  const dialer = new LinkSession('dialer', id);
  const listener = new LinkSession('listener', id, true, limits);
  const pair = memoryTransportPair();
  dialer.attach(pair.a);
  listener.attach(pair.b);
  return { dialer, listener };
}

function nextAbort(session: LinkSession): Promise<LinkAbortedError> {
  return new Promise((resolve) => session.once('aborted', resolve));
}

async function readToEnd(channel: IncomingChannel): Promise<number> {
  let bytes = 0;
  for await (const chunk of channel.readable) bytes += (chunk as Buffer).length;
  return bytes;
}

describe('a session caps what its peer can make it hold', () => {
  it('has defaults a migration never reaches', () => {
    expect(new LinkSession('dialer', randomBytes(16)).limits).toEqual(DEFAULT_LINK_LIMITS);
    // one channel per image file of a dump sent at once: a few hundred processes' worth
    expect(DEFAULT_LINK_LIMITS.maxOpenChannels).toBeGreaterThanOrEqual(2048);
    // every channel's initial window, and dozens of channels whose reader is busy at the largest window
    expect(DEFAULT_LINK_LIMITS.maxUnreadBytes).toBeGreaterThanOrEqual(DEFAULT_LINK_LIMITS.maxOpenChannels * INITIAL_CHANNEL_WINDOW + 32 * CHANNEL_WINDOW);
    expect(DEFAULT_LINK_LIMITS.maxControlMessages).toBeGreaterThanOrEqual(64);
  });

  it('refuses limits whose unread budget cannot hold the initial window of every channel the peer may open', () => {
    const limits = { maxOpenChannels: 64, maxUnreadBytes: 64 * INITIAL_CHANNEL_WINDOW - 1 };
    expect(() => new LinkSession('listener', randomBytes(16), true, limits)).toThrow(LinkLimitsError);
    expect(() => new LinkSession('listener', randomBytes(16), true, limits)).toThrow(expect.objectContaining({ code: 'HAUL_LINK_LIMITS_INVALID' }));
    expect(new LinkSession('listener', randomBytes(16), true, { ...limits, maxUnreadBytes: 64 * INITIAL_CHANNEL_WINDOW }).limits.maxUnreadBytes).toBe(64 * INITIAL_CHANNEL_WINDOW);
  });

  it('refuses such limits when a listener starts, not at every peer\'s handshake', async () => {
    const limits = { maxOpenChannels: 64, maxUnreadBytes: 64 * INITIAL_CHANNEL_WINDOW - 1 };
    await expect(LinkListener.listen('127.0.0.1', 0, { insecure: true, application: hostApp('destination'), limits })).rejects.toThrow(LinkLimitsError);
  });

  it('aborts when the peer holds more channels open at once than the cap, and tells the peer', async () => {
    const { dialer, listener } = limitedPair({ maxOpenChannels: 3 });
    const aborted = nextAbort(listener);
    const told = nextAbort(dialer);
    for (let i = 0; i < 4; i++) openChannel(dialer, ChannelKind.IMAGE_FILE, `file-${i}`).writable.write(Buffer.from('x'));
    const error = await aborted;
    expect(error.reasonCode).toBe('HAUL_LINK_LIMIT_OPEN_CHANNELS');
    expect(error.cause).toBeInstanceOf(LinkLimitError);
    expect((error.cause as LinkLimitError).limit).toBe('openChannels');
    expect((await told).reasonCode).toBe('HAUL_LINK_LIMIT_OPEN_CHANNELS');
  });

  it('counts only the channels still open: one after another, any number may come', async () => {
    const { dialer, listener } = limitedPair({ maxOpenChannels: 2 });
    const done: Array<Promise<number>> = [];
    listener.on('channel', (channel) => done.push(readToEnd(channel)));
    for (let i = 0; i < 10; i++) {
      openChannel(dialer, ChannelKind.IMAGE_FILE, `file-${i}`).writable.end(randomBytes(1000));
      while (done.length <= i) await sleep(1);
      await done[i];
    }
    expect(await Promise.all(done)).toEqual(Array(10).fill(1000));
    expect(listener.isOpen).toBe(true);
  });

  it('holds what channels nobody reads within the unread budget, and never aborts a sender that keeps to its credit', async () => {
    const budget = 4 * 1024 * 1024;
    const { dialer, listener } = limitedPair({ maxOpenChannels: 8, maxUnreadBytes: budget });
    const channels: IncomingChannel[] = [];
    listener.on('channel', (channel) => channels.push(channel)); // nobody reads, for now
    const sent = [...Array(3).keys()].map(() => randomBytes(2 * 1024 * 1024));
    sent.forEach((bytes, i) => openChannel(dialer, ChannelKind.PAGES, `pages-${i}`).writable.end(bytes));
    await sleep(100);
    expect(listener.isOpen).toBe(true);
    expect(channels.reduce((sum, channel) => sum + channel.unread(), 0n)).toBeLessThanOrEqual(BigInt(budget));
    expect(await Promise.all(channels.map(readToEnd))).toEqual(sent.map((bytes) => bytes.length));
    expect(listener.isOpen).toBe(true);
  });

  it('lets a reader that keeps up take far more than the unread budget', async () => {
    const { dialer, listener } = limitedPair({ maxOpenChannels: 8, maxUnreadBytes: 4 * 1024 * 1024 });
    const total = new Promise<number>((resolve) => listener.once('channel', (channel) => resolve(readToEnd(channel))));
    const channel = openChannel(dialer, ChannelKind.PAGES, 'pages-1');
    for (let i = 0; i < 12; i++) if (!channel.writable.write(randomBytes(2 * 1024 * 1024))) await new Promise((resolve) => channel.writable.once('drain', resolve));
    channel.writable.end();
    expect(await total).toBe(24 * 1024 * 1024);
    expect(listener.isOpen).toBe(true);
  });

  it('aborts when the peer sends more control messages than a control inbox keeps', async () => {
    const { dialer, listener } = limitedPair({ maxControlMessages: 5 });
    const inbox = new ControlInbox(listener);
    const aborted = nextAbort(listener);
    const control = openChannel(dialer, ChannelKind.CONTROL, 'migration');
    for (let i = 0; i < 6; i++) await sendControl(control.writable, { progress: { pages: BigInt(i), bytes: 0n } });
    const error = await aborted;
    expect(error.reasonCode).toBe('HAUL_LINK_LIMIT_CONTROL_MESSAGES');
    await expect(inbox.next('commit')).rejects.toMatchObject({ reasonCode: 'HAUL_LINK_LIMIT_CONTROL_MESSAGES' });
    expect(inbox.messages.length).toBeLessThanOrEqual(5);
  });

  describe('a peer sending frames by hand', () => {
    /** A listener session whose dialer is the test, frame by frame. */
    function rawDialer(limits: Partial<LinkLimits>): { session: LinkSession; send(frame: Frame): void } {
      const session = new LinkSession('listener', randomBytes(16), true, limits);
      const pair = memoryTransportPair();
      session.attach(pair.b);
      pair.a.deliverTo({ frame: () => {}, closed: () => {} });
      return { session, send: (frame) => pair.a.send(encodeFrame(frame), () => {}) };
    }
    const frame = (type: Frame['type'], channel: number, offset: bigint, payload: Buffer): Frame => ({ type, kind: ChannelKind.PAGES, channel, offset, payload });

    it('cannot make a reset channel keep bytes outside the caps', async () => {
      const { session, send } = rawDialer({ maxOpenChannels: 2 });
      const channels: IncomingChannel[] = [];
      session.on('channel', (channel) => channels.push(channel));
      // each channel is reset at once, so none counts as open, then sent all the credit it has
      const part = INITIAL_CHANNEL_WINDOW / 4;
      for (let id = 1; id < 40; id += 2) {
        send(frame(FrameType.OPEN, id, 0n, Buffer.from(`pages-${id}`)));
        send(frame(FrameType.RESET, id, 0n, Buffer.from('gave up')));
        for (let at = 0; at < INITIAL_CHANNEL_WINDOW; at += part) send(frame(FrameType.DATA, id, BigInt(at), randomBytes(part)));
      }
      while (channels.length < 20) await sleep(1);
      await sleep(20);
      expect(session.isOpen).toBe(true);
      expect(channels.reduce((sum, channel) => sum + channel.queuedBytes(), 0)).toBe(0);
    });

    it('refuses a channel name longer than any file name', async () => {
      const { session, send } = rawDialer({});
      const aborted = nextAbort(session);
      send(frame(FrameType.OPEN, 1, 0n, Buffer.alloc(64 * 1024, 'a')));
      expect((await aborted).reasonCode).toBe('HAUL_LINK_PROTOCOL');
    });

    it("refuses data that names another kind than its channel's (on a plain link, the kind decides whether it needs a CRC)", async () => {
      const { session, send } = rawDialer({});
      const aborted = nextAbort(session);
      const delivered: Buffer[] = [];
      session.on('channel', (channel) => channel.readable.on('data', (chunk: Buffer) => delivered.push(chunk)));
      send({ ...frame(FrameType.OPEN, 1, 0n, Buffer.from('lazy-push')), kind: ChannelKind.LAZY_PUSH });
      send(frame(FrameType.DATA, 1, 0n, Buffer.from('not a lazy page')));
      const error = await aborted;
      expect(error.reasonCode).toBe('HAUL_LINK_PROTOCOL');
      expect(error.message).toMatch(/data of kind 3 for channel 1, which opened as kind 7/);
      expect(delivered).toEqual([]);
    });
  });

  describe('credit', () => {
    /** A session whose peer is the test, frame by frame. */
    function rawPeer(): { session: LinkSession; frames: Frame[]; send(frame: Frame): void } {
      const session = new LinkSession('dialer', randomBytes(16));
      const pair = memoryTransportPair();
      session.attach(pair.a);
      const frames: Frame[] = [];
      pair.b.deliverTo({ frame: readFrames(frames), closed: () => {} });
      return { session, frames, send: (frame) => pair.b.send(encodeFrame(frame), () => {}) };
    }
    const credit = (channel: number, acked: bigint, limit: bigint): Frame => {
      const payload = Buffer.alloc(8);
      payload.writeBigUInt64LE(limit);
      return { type: FrameType.CREDIT, kind: ChannelKind.CONTROL, channel, offset: acked, payload };
    };

    it('aborts when the peer grants more than one window beyond what it acknowledged', async () => {
      const { session, frames, send } = rawPeer();
      const aborted = nextAbort(session);
      const channel = openChannel(session, ChannelKind.PAGES, 'pages-1');
      channel.writable.write(randomBytes(1024 * 1024));
      while (!frames.some((f) => f.type === FrameType.DATA)) await sleep(1);
      // a peer that never acknowledges but takes everything would grow the replay buffer forever
      send(credit(channel.id, 0n, BigInt(CHANNEL_WINDOW) * 100n));
      const error = await aborted;
      expect(error.reasonCode).toBe('HAUL_LINK_LIMIT_CREDIT');
      expect((error.cause as LinkLimitError).limit).toBe('credit');
    });

    it('aborts when the peer acknowledges bytes that were never sent', async () => {
      const { session, frames, send } = rawPeer();
      const aborted = nextAbort(session);
      const channel = openChannel(session, ChannelKind.PAGES, 'pages-1');
      channel.writable.write(randomBytes(1000));
      while (!frames.some((f) => f.type === FrameType.DATA)) await sleep(1);
      send(credit(channel.id, 5000n, 5000n + BigInt(CHANNEL_WINDOW)));
      expect((await aborted).reasonCode).toBe('HAUL_LINK_PROTOCOL');
    });

    it('takes the credit an honest receiver grants', async () => {
      const { session, frames, send } = rawPeer();
      const channel = openChannel(session, ChannelKind.PAGES, 'pages-1');
      channel.writable.write(randomBytes(1000));
      while (!frames.some((f) => f.type === FrameType.DATA)) await sleep(1);
      send(credit(channel.id, 1000n, 1000n + BigInt(CHANNEL_WINDOW)));
      await sleep(20);
      expect(session.isOpen).toBe(true);
    });
  });
});

/** Collects the frames a session sends, from its messages. */
function readFrames(into: Frame[]): (message: Buffer) => void {
  const reader = new FrameReader();
  return (message) => {
    const frame = reader.read(message);
    if (frame) into.push(frame);
  };
}
