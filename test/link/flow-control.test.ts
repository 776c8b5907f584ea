import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import type { IncomingChannel } from '../../src/link/channels.js';
import { FrameReader, FrameType, encodeFrame, type Frame } from '../../src/link/frame.js';
import type { LinkAbortedError } from '../../src/link/link-errors.js';
import { Messages } from '../../src/link/messages.js';
import { CHANNEL_WINDOW, INITIAL_CHANNEL_WINDOW, LinkSession, type FrameTransport, type LinkLimits } from '../../src/link/session.js';
import { memoryTransportPair } from '../support/memory-link.js';
import { writeAll } from '../support/link-traffic.js';
import { receiveControl, sendControl, ChannelKind, openChannel } from '../../proxy/wire/index.js';

const MiB = 1024 * 1024;

/**
 * A dialer and a listener with `limits` on a memory connection, and what the listener holds unread:
 * its peak is measured after every frame it takes, so no moment between two polls is missed.
 */
function watchedPair(limits: Partial<LinkLimits> = {}) {
  const id = randomBytes(16);
  const dialer = new LinkSession('dialer', id);
  const listener = new LinkSession('listener', id, true, limits);
  const incoming: IncomingChannel[] = [];
  listener.on('channel', (channel) => incoming.push(channel));
  const unread = (): bigint => incoming.reduce((sum, channel) => sum + channel.unread(), 0n);
  const watch = { peak: 0n, framesIn: 0 };
  const watched = (transport: FrameTransport): FrameTransport => ({
    send: (bytes, done) => transport.send(bytes, done),
    close: (reason) => transport.close(reason),
    deliverTo: (handlers) =>
      transport.deliverTo({
        frame: (bytes) => {
          handlers.frame(bytes);
          watch.framesIn++;
          const now = unread();
          if (now > watch.peak) watch.peak = now;
        },
        closed: (reason) => handlers.closed(reason),
      }),
  });
  let pair = memoryTransportPair();
  dialer.attach(pair.a);
  listener.attach(watched(pair.b));
  /** Drops the connection with whatever was on the way, and resumes both sessions on a new one. */
  const cutAndResume = async (): Promise<void> => {
    const detached = [dialer, listener].map((session) => new Promise((resolve) => session.once('detached', resolve)));
    pair.cut();
    await Promise.all(detached);
    const dialerProgress = dialer.progress();
    const listenerProgress = listener.progress();
    pair = memoryTransportPair();
    dialer.attach(pair.a, listenerProgress);
    listener.attach(watched(pair.b), dialerProgress);
  };
  return { dialer, listener, incoming, unread, watch, cutAndResume };
}

/** Resolves once no frame has reached the listener for `quietMs`: the sender has nothing it may still send. */
async function senderStalled(watch: { framesIn: number }, quietMs = 100): Promise<void> {
  for (let seen = -1; seen !== watch.framesIn; ) {
    seen = watch.framesIn;
    await sleep(quietMs);
  }
}

/** Resolves once `condition` holds (the test's timeout bounds the wait). */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await sleep(5);
}

function nextAbort(session: LinkSession): Promise<LinkAbortedError> {
  return new Promise((resolve) => session.once('aborted', resolve));
}

/** Reads `bytes` of a channel as fast as they come, then stops (the reader's disk is busy). */
async function readThenStop(channel: IncomingChannel, bytes: number): Promise<void> {
  let consumed = 0;
  await new Promise<void>((resolve) => {
    channel.readable.on('data', (chunk: Buffer) => {
      consumed += chunk.length;
      if (consumed < bytes) return;
      channel.readable.pause();
      resolve();
    });
  });
}

async function readToEnd(channel: IncomingChannel): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of channel.readable) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

describe('flow control: a receiver holds no more than it granted, and an honest sender never makes it abort', () => {
  it('carries a channel read to its end past 320 channels that were each sent more than their initial window and are never read', async () => {
    const limits = { maxOpenChannels: 512, maxUnreadBytes: 96 * MiB };
    const { dialer, listener, incoming, watch } = watchedPair(limits);
    const aborted = nextAbort(listener);
    const bulk = randomBytes(MiB);
    for (let i = 0; i < 320; i++) openChannel(dialer, ChannelKind.PAGES, `idle-${i}`).writable.write(bulk);
    const wanted = randomBytes(32 * MiB);
    const writing = writeAll(openChannel(dialer, ChannelKind.PAGES, 'wanted'), wanted, () => 0.5);
    // the reader of 'wanted' waits for another channel first: the control channel's word to start
    const control = openChannel(dialer, ChannelKind.CONTROL, 'control');
    // a channel nobody reads costs its initial window, and no more
    const idle = (): IncomingChannel[] => incoming.filter((channel) => channel.name.startsWith('idle-'));
    await Promise.race([until(() => idle().length === 320 && idle().every((channel) => channel.unread() === BigInt(INITIAL_CHANNEL_WINDOW))), aborted]);
    await senderStalled(watch);
    for (const channel of idle()) expect(channel.unread()).toBe(BigInt(INITIAL_CHANNEL_WINDOW));
    await sendControl(control.writable, { images_complete: { files: 0, page_streams: 321, bytes: BigInt(wanted.length), filesystem_tars: 0 } });
    const controlChannel = incoming.find((channel) => channel.name === 'control')!;
    const said = await receiveControl(controlChannel.readable).next();
    expect(said.value).toMatchObject({ images_complete: { page_streams: 321 } });
    const got = await Promise.race([readToEnd(incoming.find((channel) => channel.name === 'wanted')!), aborted]);
    await writing;
    expect(Buffer.isBuffer(got) && got.equals(wanted)).toBe(true);
    expect(listener.isOpen).toBe(true);
    expect(dialer.isOpen).toBe(true);
    expect(watch.peak).toBeLessThanOrEqual(BigInt(limits.maxUnreadBytes));
    dialer.close();
  });

  it('keeps that channel going across connection cuts: credit lost with a connection is sent again', async () => {
    const limits = { maxOpenChannels: 512, maxUnreadBytes: 96 * MiB };
    const { dialer, listener, incoming, watch, cutAndResume } = watchedPair(limits);
    const aborted = nextAbort(listener);
    const bulk = randomBytes(MiB);
    for (let i = 0; i < 320; i++) openChannel(dialer, ChannelKind.IMAGE_FILE, `idle-${i}`).writable.write(bulk);
    const wanted = randomBytes(24 * MiB);
    const writing = writeAll(openChannel(dialer, ChannelKind.PAGES, 'wanted'), wanted, () => 0.5);
    while (!incoming.some((channel) => channel.name === 'wanted')) await sleep(1);
    const reading = readToEnd(incoming.find((channel) => channel.name === 'wanted')!);
    for (let cut = 0; cut < 4; cut++) {
      await sleep(10 + cut * 7);
      await cutAndResume();
    }
    const got = await Promise.race([reading, aborted]);
    await writing;
    expect(Buffer.isBuffer(got) && got.equals(wanted)).toBe(true);
    expect(listener.isOpen).toBe(true);
    expect(watch.peak).toBeLessThanOrEqual(BigInt(limits.maxUnreadBytes));
    dialer.close();
  });

  it('with the default limits, lets 130 page streams fill up towards a destination that reads none of them yet, then delivers them all', async () => {
    const { dialer, listener, incoming, watch } = watchedPair();
    const aborted = nextAbort(listener);
    const stream = randomBytes(CHANNEL_WINDOW + 1);
    const writes = [...Array(130).keys()].map((i) => new Promise<void>((resolve) => openChannel(dialer, ChannelKind.PAGES, `pages-${i}`).writable.end(stream, resolve)));
    // a destination whose disk has fallen behind: it takes nothing until the sender can send no more
    const filled = (): boolean => incoming.length === 130 && incoming.every((channel) => channel.unread() === BigInt(INITIAL_CHANNEL_WINDOW));
    await Promise.race([until(filled).then(() => senderStalled(watch)), aborted]);
    expect(listener.isOpen).toBe(true);
    expect(filled()).toBe(true);
    expect(watch.peak).toBeLessThanOrEqual(BigInt(listener.limits.maxUnreadBytes));
    const lengths = await Promise.race([Promise.all(incoming.map(async (channel) => (await readToEnd(channel)).length)), aborted]);
    await Promise.all(writes);
    expect(lengths).toEqual(Array(130).fill(stream.length));
    expect(listener.isOpen).toBe(true);
    // the windows those streams grew to were given back: the next busy one grows as large
    const next = openChannel(dialer, ChannelKind.PAGES, 'pages-130');
    void writeAll(next, randomBytes(32 * MiB), () => 0.5).catch(() => {});
    while (incoming.length === 130) await sleep(1);
    await readThenStop(incoming[130]!, 16 * MiB);
    await until(() => incoming[130]!.unread() > BigInt((CHANNEL_WINDOW * 3) / 4));
    dialer.close();
  }, 60_000);

  it('still lets one busy channel have a whole channel window in flight, and no more', async () => {
    const { dialer, incoming, unread, watch } = watchedPair();
    const channel = openChannel(dialer, ChannelKind.PAGES, 'pages');
    void writeAll(channel, randomBytes(64 * MiB), () => 0.5).catch(() => {});
    while (incoming.length === 0) await sleep(1);
    await readThenStop(incoming[0]!, 24 * MiB);
    // the last credit went out at most a quarter window before the reader stopped
    await until(() => unread() > BigInt((CHANNEL_WINDOW * 3) / 4));
    await senderStalled(watch);
    expect(unread()).toBeLessThanOrEqual(BigInt(CHANNEL_WINDOW));
    dialer.close();
  });

  describe('a sender that sends past its credit', () => {
    /** A listener session whose dialer is the test, frame by frame; what the listener sends back is kept. */
    function rawDialer(): { session: LinkSession; back: Frame[]; send(frame: Frame): void } {
      const session = new LinkSession('listener', randomBytes(16));
      const pair = memoryTransportPair();
      session.attach(pair.b);
      const back: Frame[] = [];
      pair.a.deliverTo({ frame: readFrames(back), closed: () => {} });
      return { session, back, send: (frame) => pair.a.send(encodeFrame(frame), () => {}) };
    }
    const pagesFrame = (type: Frame['type'], channel: number, offset: bigint, payload: Buffer): Frame => ({ type, kind: ChannelKind.PAGES, channel, offset, payload });

    it('aborts the session with HAUL_LINK_CREDIT_OVERRUN when it sends more than a channel\'s initial window unasked, and tells the peer', async () => {
      const { session, back, send } = rawDialer();
      const aborted = nextAbort(session);
      session.on('channel', () => {}); // nobody reads: no credit beyond the initial window
      send(pagesFrame(FrameType.OPEN, 1, 0n, Buffer.from('pages-1')));
      for (let at = 0; at < MiB; at += 256 * 1024) send(pagesFrame(FrameType.DATA, 1, BigInt(at), randomBytes(256 * 1024)));
      const error = await aborted; // no abort at all: the test times out
      expect(error.reasonCode).toBe('HAUL_LINK_CREDIT_OVERRUN');
      while (!back.some((frame) => frame.type === FrameType.ABORT)) await sleep(1);
      const told = Messages.abort.decode(back.find((frame) => frame.type === FrameType.ABORT)!.payload);
      expect(told.code).toBe('HAUL_LINK_CREDIT_OVERRUN');
    });

    it('aborts the same way past credit it was granted later, on a channel that is read', async () => {
      const { session, back, send } = rawDialer();
      const aborted = nextAbort(session);
      // a reader that takes the first bytes and then no more, so the credit it grants stays put
      session.on('channel', (channel) => channel.readable.once('data', () => channel.readable.pause()));
      send(pagesFrame(FrameType.OPEN, 1, 0n, Buffer.from('pages-1')));
      send(pagesFrame(FrameType.DATA, 1, 0n, randomBytes(64 * 1024)));
      // take the credit it grants for them, then send a byte beyond it
      while (!back.some((frame) => frame.type === FrameType.CREDIT)) await sleep(1);
      await sleep(20);
      const granted = back.filter((frame) => frame.type === FrameType.CREDIT).reduce((max, frame) => (frame.payload.readBigUInt64LE(0) > max ? frame.payload.readBigUInt64LE(0) : max), 0n);
      let at = 64n * 1024n;
      for (; at + 256n * 1024n <= granted; at += 256n * 1024n) send(pagesFrame(FrameType.DATA, 1, at, randomBytes(256 * 1024)));
      send(pagesFrame(FrameType.DATA, 1, at, randomBytes(Number(granted - at) + 1)));
      const error = await aborted; // no abort at all: the test times out
      expect(error.reasonCode).toBe('HAUL_LINK_CREDIT_OVERRUN');
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
