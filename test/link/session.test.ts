import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { FrameReader, FrameType } from '../../src/link/frame.js';
import { LinkSession } from '../../src/link/session.js';
import { memoryTransportPair } from '../support/memory-link.js';
import { seededRandom } from '../support/seeded-random.js';
import { readAll, sessionPair, writeAll } from '../support/link-traffic.js';
import { ChannelKind, openChannel } from '../../proxy/wire/index.js';


const ROUNDS = Number(process.env['LINK_ROUNDS'] ?? 1000);
const KINDS: ChannelKind[] = [ChannelKind.CONTROL, ChannelKind.IMAGE_FILE, ChannelKind.PAGES, ChannelKind.LAZY_ANSWERS, ChannelKind.FILESYSTEM_TAR];

describe('the link session', () => {
  it('carries many channels at once, every byte in order per channel, whatever the chunking and pace (1000 random cases)', async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const next = seededRandom(round + 1);
      const { dialer, listener } = sessionPair(() => (next() < 0.1 ? Math.floor(next() * 3) : 0));
      const sent = new Map<string, Buffer>();
      const received = new Map<string, Promise<Buffer>>();
      listener.on('channel', (channel) => received.set(channel.name, readAll(channel, next)));
      const writers = [];
      const channels = 1 + Math.floor(next() * 5);
      for (let c = 0; c < channels; c++) {
        const name = `r${round}c${c}`;
        const size = next() < 0.1 ? 0 : Math.floor(next() * (next() < 0.2 ? 600_000 : 40_000));
        const data = randomBytes(size);
        sent.set(name, data);
        writers.push(writeAll(openChannel(dialer, KINDS[Math.floor(next() * KINDS.length)]!, name), data, next));
      }
      await Promise.all(writers);
      while (received.size < channels) await sleep(1);
      for (const [name, data] of sent) expect((await received.get(name)!).equals(data), `${name}`).toBe(true);
    }
  }, 120_000);

  it('sends a lazy-page answer ahead of bulk pages that are waiting for the connection', async () => {
    const { dialer, listener, pair } = sessionPair();
    listener.on('channel', (channel) => channel.readable.resume());
    const wire: Array<{ channel: number; type: number }> = [];
    const send = pair.a.send.bind(pair.a);
    const reader = new FrameReader();
    pair.a.send = (bytes, done) => {
      const frame = reader.read(bytes);
      if (frame) wire.push({ channel: frame.channel, type: frame.type });
      send(bytes, done);
    };
    // eight bulk channels keep the connection busy
    for (let i = 0; i < 8; i++) openChannel(dialer, ChannelKind.PAGES, `bulk${i}`).writable.write(randomBytes(2 * 1024 * 1024));
    while (wire.length < 50) await sleep(1);
    const answer = openChannel(dialer, ChannelKind.LAZY_ANSWERS, 'answer');
    answer.writable.write(randomBytes(4096));
    const mark = wire.length;
    while (!wire.some((f) => f.channel === answer.id && f.type === FrameType.DATA)) await sleep(1);
    // nothing else was sent between the answer's write and its open and data frames
    expect(wire.slice(mark, mark + 2)).toEqual([
      { channel: answer.id, type: FrameType.OPEN },
      { channel: answer.id, type: FrameType.DATA },
    ]);
  });

  it('never lets a stalled consumer on one channel hold up another', async () => {
    const { dialer, listener } = sessionPair();
    const done = new Map<string, Promise<Buffer>>();
    listener.on('channel', (channel) => {
      if (channel.name === 'fast') done.set('fast', readAll(channel, () => 1));
      // 'stalled' is never read
    });
    openChannel(dialer, ChannelKind.PAGES, 'stalled').writable.write(randomBytes(16 * 1024 * 1024));
    const data = randomBytes(8 * 1024 * 1024);
    await writeAll(openChannel(dialer, ChannelKind.PAGES, 'fast'), data, () => 0.5);
    while (!done.has('fast')) await sleep(1);
    expect((await done.get('fast')!).equals(data)).toBe(true);
  });

  it('carries an abort and its reason to the other side', async () => {
    const { dialer, listener } = sessionPair();
    const aborted = new Promise<Error>((resolve) => listener.once('aborted', resolve));
    dialer.abort('restore failed on dst: Unable to open timens-13.img');
    const error = await aborted;
    expect(error.message).toBe('the peer aborted: restore failed on dst: Unable to open timens-13.img');
    expect(listener.isOpen).toBe(false);
  });
});

describe('resuming a session on a new connection', () => {
  it('loses and repeats nothing when the connection drops mid-transfer, again and again (200 random cases)', async () => {
    for (let round = 0; round < 200; round++) {
      const next = seededRandom(10_000 + round);
      const id = randomBytes(16);
      const dialer = new LinkSession('dialer', id);
      const listener = new LinkSession('listener', id);
      let pair = memoryTransportPair(() => (next() < 0.2 ? 1 : 0));
      dialer.attach(pair.a);
      listener.attach(pair.b);
      const received = new Map<string, Promise<Buffer>>();
      listener.on('channel', (channel) => received.set(channel.name, readAll(channel, next)));
      const sent = new Map<string, Buffer>();
      const writers = [];
      for (let c = 0; c < 3; c++) {
        const data = randomBytes(Math.floor(next() * 3_000_000));
        sent.set(`c${c}`, data);
        writers.push(writeAll(openChannel(dialer, ChannelKind.PAGES, `c${c}`), data, next));
      }
      // cut the connection a few times at random moments; each time both sides resume on a new one,
      // telling each other how far they got (the handshake does this over a real connection)
      let cuts = 0;
      const cutter = (async () => {
        while (cuts < 3) {
          await sleep(Math.floor(next() * 15));
          if ([...received.values()].length === sent.size && (await Promise.race([Promise.all(received.values()).then(() => true), sleep(0).then(() => false)]))) return;
          pair.cut();
          cuts++;
          await sleep(1);
          const dialerProgress = dialer.progress();
          const listenerProgress = listener.progress();
          pair = memoryTransportPair(() => (next() < 0.2 ? 1 : 0));
          dialer.attach(pair.a, listenerProgress);
          listener.attach(pair.b, dialerProgress);
        }
      })();
      await Promise.all(writers);
      await cutter;
      while (received.size < sent.size) await sleep(1);
      for (const [name, data] of sent) expect((await received.get(name)!).equals(data), `round ${round} ${name}`).toBe(true);
    }
  }, 120_000);
});
