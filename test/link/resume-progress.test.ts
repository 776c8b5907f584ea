import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import type { IncomingChannel } from '../../src/link/channels.js';
import { LinkAbortedError, LinkProtocolError } from '../../src/link/link-errors.js';
import { LinkSession, type FrameTransport } from '../../src/link/session.js';
import { memoryTransportPair } from '../support/memory-link.js';
import { sessionPair } from '../support/link-traffic.js';
import { ChannelKind, openChannel } from '../../proxy/wire/index.js';

function nextAbort(session: LinkSession): Promise<LinkAbortedError> {
  return new Promise((resolve) => session.once('aborted', resolve));
}

async function fullyRead(channel: IncomingChannel, bytes: number): Promise<void> {
  let got = 0;
  channel.readable.on('data', (chunk: Buffer) => void (got += chunk.length));
  while (got < bytes) await sleep(1);
}

/** Both sessions lose their connection; each sees it as detached. */
async function cut(pair: ReturnType<typeof memoryTransportPair>, ...sessions: LinkSession[]): Promise<void> {
  const detached = sessions.map((session) => new Promise((resolve) => session.once('detached', resolve)));
  pair.cut();
  await Promise.all(detached);
}

describe('resuming a session trusts nothing the peer says about its progress', () => {
  it('aborts with a protocol error when the peer claims more bytes than were ever sent, and the peer hears why', async () => {
    const { dialer, listener, pair } = sessionPair();
    const arrived = new Promise<IncomingChannel>((resolve) => listener.once('channel', resolve));
    const channel = openChannel(dialer, ChannelKind.PAGES, 'pages-1');
    channel.writable.write(randomBytes(1000));
    await fullyRead(await arrived, 1000);
    await cut(pair, dialer, listener);
    channel.writable.write(randomBytes(1000)); // waiting to be framed when the resume comes
    const dialerAborted = nextAbort(dialer);
    const listenerAborted = nextAbort(listener);
    const next = memoryTransportPair();
    listener.attach(next.b, dialer.progress());
    dialer.attach(next.a, [{ channel: channel.id, received: 1_000_000n, ended: false }]);
    const error = await dialerAborted;
    expect(error.reasonCode).toBe('HAUL_LINK_PROTOCOL');
    expect(error.cause).toBeInstanceOf(LinkProtocolError);
    expect(error.message).toContain(`channel ${channel.id}`);
    const told = await listenerAborted;
    expect(told.origin).toBe('peer');
    expect(told.reasonCode).toBe('HAUL_LINK_PROTOCOL');
  });

  it('aborts when the peer claims to have less than it already acknowledged', async () => {
    const { dialer, listener, pair } = sessionPair();
    const arrived = new Promise<IncomingChannel>((resolve) => listener.once('channel', resolve));
    const channel = openChannel(dialer, ChannelKind.PAGES, 'pages-1');
    channel.writable.write(randomBytes(4 * 1024 * 1024));
    await fullyRead(await arrived, 4 * 1024 * 1024);
    await sleep(20); // the receiver's credit (acknowledging the bytes) reaches the sender
    await cut(pair, dialer, listener);
    const aborted = nextAbort(dialer);
    const next = memoryTransportPair();
    listener.attach(next.b, dialer.progress());
    dialer.attach(next.a, [{ channel: channel.id, received: 0n, ended: false }]);
    const error = await aborted;
    expect(error.reasonCode).toBe('HAUL_LINK_PROTOCOL');
    expect(error.message).toMatch(/acknowledged/);
  });

  it('aborts when the peer claims a channel ended that never ended', async () => {
    const { dialer, listener, pair } = sessionPair();
    const arrived = new Promise<IncomingChannel>((resolve) => listener.once('channel', resolve));
    const channel = openChannel(dialer, ChannelKind.PAGES, 'pages-1');
    channel.writable.write(randomBytes(1000));
    await fullyRead(await arrived, 1000);
    await cut(pair, dialer, listener);
    const aborted = nextAbort(dialer);
    const next = memoryTransportPair();
    listener.attach(next.b, dialer.progress());
    dialer.attach(next.a, [{ channel: channel.id, received: 1000n, ended: true }]);
    expect((await aborted).reasonCode).toBe('HAUL_LINK_PROTOCOL');
  });

  it('still resumes a peer that tells the truth', async () => {
    const { dialer, listener, pair } = sessionPair();
    const arrived = new Promise<IncomingChannel>((resolve) => listener.once('channel', resolve));
    const channel = openChannel(dialer, ChannelKind.PAGES, 'pages-1');
    const data = randomBytes(3 * 1024 * 1024);
    channel.writable.write(data.subarray(0, 1024 * 1024));
    const incoming = await arrived;
    const chunks: Buffer[] = [];
    incoming.readable.on('data', (chunk: Buffer) => chunks.push(chunk));
    while (Buffer.concat(chunks).length < 1024 * 1024) await sleep(1);
    await cut(pair, dialer, listener);
    const next = memoryTransportPair();
    const dialerProgress = dialer.progress();
    dialer.attach(next.a, listener.progress());
    listener.attach(next.b, dialerProgress);
    channel.writable.end(data.subarray(1024 * 1024));
    await new Promise((resolve) => incoming.readable.once('end', resolve));
    expect(Buffer.concat(chunks).equals(data)).toBe(true);
    expect(dialer.isOpen).toBe(true);
  });
});

describe('an error while the session sends', () => {
  it('aborts the session with the error as its cause instead of throwing out of the event loop', async () => {
    const session = new LinkSession('dialer', randomBytes(16));
    const failure = new Error('the transport broke');
    const broken: FrameTransport = {
      send() {
        throw failure;
      },
      deliverTo() {},
      close() {},
    };
    const aborted = nextAbort(session);
    session.attach(broken);
    openChannel(session, ChannelKind.CONTROL, 'control').writable.write(Buffer.from('hello'));
    const error = await aborted;
    expect(error.cause).toBe(failure);
    expect(error.message).toMatch(/the transport broke/);
    expect(session.isOpen).toBe(false);
  });
});
