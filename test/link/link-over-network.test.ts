import { createHash, randomBytes } from 'node:crypto';
import { connect, createServer, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { IncomingChannel } from '../../src/link/channels.js';
import { dialLink } from '../../src/link/dialer.js';
import { FrameType, encodeFrame } from '../../src/link/frame.js';
import { helloFrame, parseHelloReply, PROTOCOL_VERSION } from '../../src/link/handshake.js';
import { LinkProtocolError } from '../../src/link/link-errors.js';
import { LinkListener } from '../../src/link/listener.js';
import type { LinkSession } from '../../src/link/session.js';
import { cuttingProxy } from '../support/cutting-proxy.js';
import { hostApp, hostInfo, linkHost, trustingPair } from '../support/link-hosts.js';
import { ChannelKind, openChannel } from '../../proxy/wire/index.js';
import { MIGRATION_PROTOCOL, peerHost } from '../../proxy/index.js';
import { encodeHostHello } from '../../proxy/wire/messages.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function collect(channel: IncomingChannel): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of channel.readable) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function nextSession(listener: LinkListener): Promise<LinkSession> {
  return new Promise((resolve) => listener.once('session', (session) => resolve(session)));
}

describe('the link over TLS with pinned certificates', () => {
  it('carries several channels between two hosts that trust each other', async () => {
    const hosts = await trustingPair();
    cleanups.push(hosts.remove);
    const listener = await LinkListener.listen('127.0.0.1', 0, { ...hosts.destination, application: hostApp('destination') });
    cleanups.push(() => listener.close());
    const accepted = nextSession(listener);
    const { session, peer } = await dialLink(`wss://127.0.0.1:${listener.port}`, { ...hosts.source, application: hostApp('source') });
    expect(peerHost(peer).role).toBe('destination');
    const remote = await accepted;
    const received = new Map<string, Promise<Buffer>>();
    remote.on('channel', (channel) => received.set(channel.name, collect(channel)));
    const sent = new Map([['pages-1', randomBytes(5_000_000)], ['inventory.img', randomBytes(300)], ['control', Buffer.from('{"restore":"go"}')]]);
    for (const [name, data] of sent) {
      const kind = name === 'control' ? ChannelKind.CONTROL : name.startsWith('pages') ? ChannelKind.PAGES : ChannelKind.IMAGE_FILE;
      openChannel(session, kind, name).writable.end(data);
    }
    while (received.size < sent.size) await sleep(5);
    for (const [name, data] of sent) expect((await received.get(name)!).equals(data)).toBe(true);
    session.close();
  });

  it('refuses a peer whose certificate is not trusted, on either side', async () => {
    const [source, destination, stranger] = await Promise.all([linkHost('s'), linkHost('d'), linkHost('x')]);
    cleanups.push(() => [source, destination, stranger].forEach((h) => h.remove()));
    await destination.trust.add('source', source.identity.fingerprint);
    await source.trust.add('destination', destination.identity.fingerprint);
    const listener = await LinkListener.listen('127.0.0.1', 0, { ...destination, application: hostApp('destination') });
    cleanups.push(() => listener.close());
    const url = `wss://127.0.0.1:${listener.port}`;
    // the stranger trusts the listener, but the listener does not trust it
    await stranger.trust.add('destination', destination.identity.fingerprint);
    await expect(dialLink(url, { ...stranger, application: hostApp('source') })).rejects.toThrow(/refused the connection: 403.*does not trust this host's certificate/);
    // the source does not trust the stranger's listener
    const impostor = await LinkListener.listen('127.0.0.1', 0, { ...stranger, application: hostApp('destination') });
    cleanups.push(() => impostor.close());
    await stranger.trust.add('source', source.identity.fingerprint);
    await expect(dialLink(`wss://127.0.0.1:${impostor.port}`, { ...source, application: hostApp('source') })).rejects.toThrow(
      new RegExp(`untrusted certificate: .* presented ${stranger.identity.fingerprint}`),
    );
    await expect(dialLink(`wss://127.0.0.1:${impostor.port}`, { ...source, application: hostApp('source') })).rejects.toMatchObject({ code: 'HAUL_LINK_UNTRUSTED' });
  });

  it('refuses plain TCP where TLS is required, and --insecure anywhere but loopback', async () => {
    const hosts = await trustingPair();
    cleanups.push(hosts.remove);
    const listener = await LinkListener.listen('127.0.0.1', 0, { ...hosts.destination, application: hostApp('destination') });
    cleanups.push(() => listener.close());
    await expect(dialLink(`ws://127.0.0.1:${listener.port}`, { insecure: true, application: hostApp('source') })).rejects.toThrow(/expects TLS|closed/);
    // and TLS to a peer that speaks none says so
    const plain = await LinkListener.listen('127.0.0.1', 0, { insecure: true, application: hostApp('destination') });
    cleanups.push(() => plain.close());
    await expect(dialLink(`wss://127.0.0.1:${plain.port}`, { ...hosts.source, application: hostApp('source') })).rejects.toMatchObject({
      code: 'HAUL_LINK_REFUSED',
      message: expect.stringMatching(/the peer does not speak TLS \(is it listening with --insecure\?\)/),
    });
    await expect(LinkListener.listen('0.0.0.0', 0, { insecure: true, application: hostApp('destination') })).rejects.toThrow(/--insecure .* refused on 0\.0\.0\.0/);
    await expect(dialLink('ws://192.0.2.1:8443', { insecure: true, application: hostApp('source') })).rejects.toThrow(/refused on 192\.0\.2\.1/);
  });

  it('links a CRIU 4.2 source with a CRIU 4.1 destination: haul bridges their pagemaps', async () => {
    const listener = await LinkListener.listen('127.0.0.1', 0, { insecure: true, application: hostApp('destination', '4.1.1') });
    cleanups.push(() => listener.close());
    const { session, peer } = await dialLink(`ws://127.0.0.1:${listener.port}`, { insecure: true, application: hostApp('source', '4.2.1') });
    expect(peerHost(peer).criu_version).toBe('4.1.1');
    session.close();
  });

  it('refuses a peer whose haul speaks another migration protocol, naming both', async () => {
    const listener = await LinkListener.listen('127.0.0.1', 0, { insecure: true, application: hostApp('destination') });
    cleanups.push(() => listener.close());
    // an older haul's hello: the same fields, without the migration protocol
    const older = { hello: encodeHostHello({ ...hostInfo('source'), haul_version: '0.0.9', incus_version: '', migration_protocol: 0 }), check: () => undefined };
    await expect(dialLink(`ws://127.0.0.1:${listener.port}`, { insecure: true, application: older })).rejects.toThrow(
      new RegExp(`the source speaks migration protocol 0 \\(haul 0\\.0\\.9\\) and the destination migration protocol ${MIGRATION_PROTOCOL} \\(haul 0\\.1\\.0\\): run the same haul version on both hosts`),
    );
  });

  it("quotes a peer's version that is not one, control characters escaped, in the refusal it causes", async () => {
    const listener = await LinkListener.listen('127.0.0.1', 0, { insecure: true, application: hostApp('destination') });
    cleanups.push(() => listener.close());
    const hostile = { hello: encodeHostHello({ ...hostInfo('source'), haul_version: '0.0.9\n\u001b[2J', incus_version: '', migration_protocol: 0 }), check: () => undefined };
    const refused = dialLink(`ws://127.0.0.1:${listener.port}`, { insecure: true, application: hostile });
    await expect(refused).rejects.toThrow('migration protocol 0 (haul "0.0.9\\n\\u001b[2J")');
    await expect(refused).rejects.not.toThrow('\u001b');
  });

  it("refuses a peer of another architecture, naming both, the peer's quoted where it is not a plain word", async () => {
    const listener = await LinkListener.listen('127.0.0.1', 0, { insecure: true, application: hostApp('destination') });
    cleanups.push(() => listener.close());
    const hostile = { hello: encodeHostHello({ ...hostInfo('source'), architecture: 'arm64\r\u001b[1A', incus_version: '', migration_protocol: MIGRATION_PROTOCOL }), check: () => undefined };
    const refused = dialLink(`ws://127.0.0.1:${listener.port}`, { insecure: true, application: hostile });
    await expect(refused).rejects.toThrow('a "arm64\\r\\u001b[1A" source cannot move processes to a x64 destination');
    await expect(refused).rejects.not.toThrow('\u001b');
  });

  it('leaves the handshake\'s application part to the application: its hello crosses both ways, and its check refuses', async () => {
    const heard: Array<[string, string]> = [];
    const application = (hello: string, refuseOn?: 'dialer' | 'listener') => ({
      hello: Buffer.from(hello),
      check: (peer: Buffer, side: 'dialer' | 'listener') => {
        heard.push([side, peer.toString()]);
        return side === refuseOn ? `${side} does not work with ${peer.toString()}` : undefined;
      },
    });
    const listener = await LinkListener.listen('127.0.0.1', 0, { insecure: true, application: application('listener-app') });
    cleanups.push(() => listener.close());
    const accepted = new Promise<Buffer>((resolve) => listener.once('session', (_session, peer) => resolve(peer)));
    const { session, peer } = await dialLink(`ws://127.0.0.1:${listener.port}`, { insecure: true, application: application('dialer-app') });
    expect(peer.toString()).toBe('listener-app');
    expect((await accepted).toString()).toBe('dialer-app');
    expect(heard).toEqual([['listener', 'dialer-app'], ['dialer', 'listener-app']]);
    session.close();

    await expect(dialLink(`ws://127.0.0.1:${listener.port}`, { insecure: true, application: application('picky', 'dialer') })).rejects.toMatchObject({
      code: 'HAUL_LINK_INCOMPATIBLE',
      message: expect.stringMatching(/cannot work with this host: dialer does not work with listener-app/),
    });
    const refusing = await LinkListener.listen('127.0.0.1', 0, { insecure: true, application: application('strict', 'listener') });
    cleanups.push(() => refusing.close());
    await expect(dialLink(`ws://127.0.0.1:${refusing.port}`, { insecure: true, application: application('dialer-app') })).rejects.toMatchObject({
      code: 'HAUL_LINK_REFUSED',
      message: expect.stringMatching(/refused the link: listener does not work with dialer-app/),
    });
  });
});

describe('the link when the connection drops', () => {
  it('resumes every channel where it stopped after the TCP connection is cut at random moments', async () => {
    const hosts = await trustingPair();
    cleanups.push(hosts.remove);
    const listener = await LinkListener.listen('127.0.0.1', 0, { ...hosts.destination, application: hostApp('destination') });
    cleanups.push(() => listener.close());
    const proxy = await cuttingProxy(listener.port);
    cleanups.push(() => proxy.close());
    const accepted = nextSession(listener);
    const { session } = await dialLink(`wss://127.0.0.1:${proxy.port}`, { ...hosts.source, application: hostApp('source'), keepaliveMs: 500 });
    const remote = await accepted;
    const received = new Map<string, Promise<Buffer>>();
    remote.on('channel', (channel) => received.set(channel.name, collect(channel)));
    const sent = new Map([...Array(3).keys()].map((i) => [`pages-${i}`, randomBytes(12_000_000)] as const));
    const writes = [...sent].map(([name, data]) => new Promise<void>((resolve) => openChannel(session, ChannelKind.PAGES, name).writable.end(data, resolve)));
    let cuts = 0;
    while (cuts < 4) {
      await sleep(20 + Math.floor(Math.random() * 120));
      if (proxy.cut() > 0) cuts++;
    }
    await Promise.all(writes);
    while (received.size < sent.size) await sleep(5);
    for (const [name, data] of sent) {
      const got = await received.get(name)!;
      expect(createHash('sha256').update(got).digest('hex'), name).toBe(createHash('sha256').update(data).digest('hex'));
    }
    // a new connection after every cut but perhaps the last, which may come after the transfer ended
    expect(proxy.connections).toBeGreaterThanOrEqual(cuts);
    session.close();
  }, 60_000);

  it('finds a connection that went silent by its keepalive, and resumes on a new one', async () => {
    const listener = await LinkListener.listen('127.0.0.1', 0, { insecure: true, application: hostApp('destination'), keepaliveMs: 200 });
    cleanups.push(() => listener.close());
    const proxy = await cuttingProxy(listener.port);
    cleanups.push(() => proxy.close());
    const accepted = nextSession(listener);
    const { session } = await dialLink(`ws://127.0.0.1:${proxy.port}`, { insecure: true, application: hostApp('source'), keepaliveMs: 200 });
    const remote = await accepted;
    let arrived = 0;
    const received = new Promise<Buffer>((resolve) => remote.once('channel', (channel) => {
      channel.readable.on('data', (chunk: Buffer) => (arrived += chunk.length));
      resolve(collect(channel));
    }));
    const data = randomBytes(20_000_000);
    const written = new Promise<void>((resolve) => openChannel(session, ChannelKind.PAGES, 'pages').writable.end(data, resolve));
    // silent in the middle of the transfer, however fast or slow this machine moves it
    for (const deadline = Date.now() + 10_000; arrived === 0; await sleep(1)) if (Date.now() > deadline) throw new Error('no page data arrived');
    expect(proxy.freeze()).toBeGreaterThan(0);
    await written;
    expect((await received).equals(data)).toBe(true);
    // at least one more: a stall of this process past the keepalive may find the new one silent too
    expect(proxy.connections).toBeGreaterThanOrEqual(2);
    session.close();
  }, 30_000);

  it('gives up with a clear error when the peer stays away longer than the resume window', async () => {
    const listener = await LinkListener.listen('127.0.0.1', 0, { insecure: true, application: hostApp('destination'), resumeWindowMs: 500 });
    cleanups.push(() => listener.close());
    const proxy = await cuttingProxy(listener.port);
    const accepted = nextSession(listener);
    const { session } = await dialLink(`ws://127.0.0.1:${proxy.port}`, { insecure: true, application: hostApp('source'), resumeWindowMs: 500 });
    const remote = await accepted;
    const sourceAborted = new Promise<Error>((resolve) => session.once('aborted', resolve));
    const destinationAborted = new Promise<Error>((resolve) => remote.once('aborted', resolve));
    // the network between them goes away for good
    proxy.cut();
    await proxy.close();
    expect((await sourceAborted).message).toMatch(/could not resume within 0\.5 s/);
    expect((await destinationAborted).message).toMatch(/not resumed within 0\.5 s/);
  });
});

/** A loopback TCP proxy to whichever port `target` names when a connection comes; `cut()` drops them all. */
async function switchingProxy(target: () => number): Promise<{ port: number; cut(): void; close(): Promise<void> }> {
  const open = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(target(), '127.0.0.1');
    for (const socket of [client, upstream]) open.add(socket.on('error', () => {}).on('close', () => open.delete(socket)));
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no port');
  return {
    port: address.port,
    cut: () => [...open].forEach((socket) => socket.resetAndDestroy()),
    close: () => new Promise((resolve) => {
      [...open].forEach((socket) => socket.destroy());
      server.close(() => resolve());
    }),
  };
}

describe('resuming a session over TLS belongs to the certificates that began it', () => {
  it('refuses a resume from another trusted host that knows the session id, and the session carries on', async () => {
    const [source, destination, other] = await Promise.all([linkHost('s'), linkHost('d'), linkHost('o')]);
    cleanups.push(() => [source, destination, other].forEach((h) => h.remove()));
    await destination.trust.add('source', source.identity.fingerprint);
    await destination.trust.add('other', other.identity.fingerprint);
    await source.trust.add('destination', destination.identity.fingerprint);
    const listener = await LinkListener.listen('127.0.0.1', 0, { ...destination, application: hostApp('destination') });
    cleanups.push(() => listener.close());
    const url = `wss://127.0.0.1:${listener.port}`;
    const accepted = nextSession(listener);
    const { session } = await dialLink(url, { ...source, application: hostApp('source') });
    const remote = await accepted;
    const refused = new Promise<Error>((resolve) => listener.once('refused', resolve));

    const intruder = new WebSocket(url, { key: other.identity.key, cert: other.identity.cert, rejectUnauthorized: false });
    cleanups.push(() => intruder.terminate());
    await new Promise((resolve) => intruder.once('open', resolve));
    const reply = new Promise<Buffer>((resolve) => intruder.once('message', resolve));
    intruder.send(helloFrame({ protocol_version: PROTOCOL_VERSION, session_id: session.sessionId, resume: true, application: Buffer.from(hostApp('source').hello), received: [] }));
    const answer = await reply;
    expect(() => parseHelloReply(answer)).toThrow(LinkProtocolError);
    expect(((): unknown => { try { parseHelloReply(answer); } catch (error) { return (error as LinkProtocolError).code; } })()).toBe('HAUL_LINK_REFUSED');
    expect((await refused as LinkProtocolError).code).toBe('HAUL_LINK_FOREIGN_PEER');

    // the session still runs between the hosts that began it
    const received = new Promise<Buffer>((resolve) => remote.once('channel', (channel) => resolve(collect(channel))));
    const data = randomBytes(100_000);
    openChannel(session, ChannelKind.PAGES, 'pages-1').writable.end(data);
    expect((await received).equals(data)).toBe(true);
    expect(remote.attachments).toBe(1);
    session.close();
  });

  it('does not resume with a listener that presents another trusted certificate at the same address', async () => {
    const [source, destination, other] = await Promise.all([linkHost('s'), linkHost('d'), linkHost('o')]);
    cleanups.push(() => [source, destination, other].forEach((h) => h.remove()));
    await source.trust.add('destination', destination.identity.fingerprint);
    await source.trust.add('other', other.identity.fingerprint);
    await destination.trust.add('source', source.identity.fingerprint);
    await other.trust.add('source', source.identity.fingerprint);
    const real = await LinkListener.listen('127.0.0.1', 0, { ...destination, application: hostApp('destination'), resumeWindowMs: 5_000 });
    const impostor = await LinkListener.listen('127.0.0.1', 0, { ...other, application: hostApp('destination') });
    cleanups.push(() => real.close(), () => impostor.close());
    let target = real.port;
    const proxy = await switchingProxy(() => target);
    cleanups.push(() => proxy.close());
    const heardByImpostor: Error[] = [];
    impostor.on('refused', (error) => heardByImpostor.push(error));
    const { session } = await dialLink(`wss://127.0.0.1:${proxy.port}`, { ...source, application: hostApp('source'), resumeWindowMs: 1_000 });
    const aborted = new Promise<Error>((resolve) => session.once('aborted', resolve));
    target = impostor.port;
    proxy.cut();
    const error = await aborted;
    expect((error.cause as LinkProtocolError | undefined)?.code).toBe('HAUL_LINK_FOREIGN_PEER');
    // the impostor never got a handshake: it never learnt the session id
    expect(heardByImpostor.map((e) => (e as LinkProtocolError).code)).not.toContain('HAUL_LINK_PROTOCOL');
  });
});

describe('bad frames on a link', () => {
  /** A raw client that does the handshake by hand, then sends whatever the test wants. */
  async function rawSession(): Promise<{ ws: WebSocket; remote: LinkSession }> {
    const listener = await LinkListener.listen('127.0.0.1', 0, { insecure: true, application: hostApp('destination') });
    cleanups.push(() => listener.close());
    const accepted = nextSession(listener);
    const ws = new WebSocket(`ws://127.0.0.1:${listener.port}`);
    await new Promise((resolve) => ws.once('open', resolve));
    const reply = new Promise<Buffer>((resolve) => ws.once('message', resolve));
    ws.send(helloFrame({ protocol_version: PROTOCOL_VERSION, session_id: randomBytes(16), resume: false, application: Buffer.from(hostApp('source').hello), received: [] }));
    parseHelloReply(await reply);
    return { ws, remote: await accepted };
  }

  const open = encodeFrame({ type: FrameType.OPEN, kind: ChannelKind.PAGES, channel: 1, offset: 0n, payload: Buffer.from('pages-1') });
  const data = encodeFrame({ type: FrameType.DATA, kind: ChannelKind.PAGES, channel: 1, offset: 0n, payload: Buffer.from('page bytes') });
  const cases: Array<[string, Buffer[], RegExp]> = [
    ['a corrupted frame', [open, Buffer.from(data).fill(0x55, 30, 31)], /corrupted frame: CRC mismatch/],
    ['a truncated frame', [open, data.subarray(0, data.length - 3)], /truncated frame/],
    ['an oversize frame', [open, Buffer.concat([data.subarray(0, 16), Buffer.from([0xff, 0xff, 0xff, 0x7f]), data.subarray(20)])], /oversize frame/],
    ['a frame for an unknown channel', [encodeFrame({ type: FrameType.DATA, kind: ChannelKind.PAGES, channel: 7, offset: 0n, payload: Buffer.from('x') })], /unknown channel 7/],
    ['data beyond what was sent', [open, encodeFrame({ type: FrameType.DATA, kind: ChannelKind.PAGES, channel: 1, offset: 100n, payload: Buffer.from('x') })], /bytes from 100 missing/],
  ];
  for (const [what, frames, reason] of cases) {
    it(`ends the session on ${what}, with a clear error and nothing delivered`, async () => {
      const { ws, remote } = await rawSession();
      const delivered: Buffer[] = [];
      remote.on('channel', (channel) => channel.readable.on('data', (chunk: Buffer) => delivered.push(chunk)).on('error', () => {}));
      const aborted = new Promise<Error>((resolve) => remote.once('aborted', resolve));
      const peerTold = new Promise<Buffer>((resolve) => ws.on('message', (m: Buffer) => m[0] === FrameType.ABORT && resolve(m)));
      const closed = new Promise((resolve) => ws.once('close', resolve));
      for (const frame of frames) ws.send(frame);
      expect((await aborted).message).toMatch(reason);
      expect((await peerTold).toString()).toMatch(reason);
      await closed;
      expect(delivered).toEqual([]);
    });
  }

  it('fails a stream whose bytes do not match the digest at its end, and aborts the session with the reason', async () => {
    const { ws, remote } = await rawSession();
    const outcome = new Promise<string>((resolve) =>
      remote.once('channel', (channel) => channel.readable.on('data', () => {}).once('end', () => resolve('ended')).once('error', (error) => resolve(`${error.name}: ${error.message}`))),
    );
    const aborted = new Promise<Error>((resolve) => remote.once('aborted', resolve));
    const forged = encodeFrame({ type: FrameType.END, kind: ChannelKind.PAGES, channel: 1, offset: 10n, payload: Buffer.alloc(32) });
    for (const frame of [open, data, forged]) ws.send(frame);
    // the consumer never sees the stream end: it cannot take the pages for whole
    expect(await outcome).toMatch(/^LinkIntegrityError: channel pages-1: BLAKE3 [0-9a-f]{64} of the bytes received differs from the sender's 0{64}$/);
    expect((await aborted).message).toMatch(/BLAKE3 .* differs/);
  });

  it('refuses a handshake in another protocol version', async () => {
    const listener = await LinkListener.listen('127.0.0.1', 0, { insecure: true, application: hostApp('destination') });
    cleanups.push(() => listener.close());
    const ws = new WebSocket(`ws://127.0.0.1:${listener.port}`);
    await new Promise((resolve) => ws.once('open', resolve));
    const reply = new Promise<Buffer>((resolve) => ws.once('message', resolve));
    ws.send(helloFrame({ protocol_version: 99, session_id: randomBytes(16), resume: false, application: Buffer.from(hostApp('source').hello), received: [] }));
    expect(() => parseHelloReply(Buffer.from([]))).toThrow();
    await expect(Promise.resolve().then(async () => parseHelloReply(await reply))).rejects.toThrow(new RegExp(`refused the link: haul link protocol 99 from the peer, this side speaks ${PROTOCOL_VERSION}`));
  });
});
