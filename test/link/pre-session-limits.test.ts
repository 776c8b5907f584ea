import { once } from 'node:events';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { dialLink } from '../../src/link/dialer.js';
import { LinkListener } from '../../src/link/listener.js';
import type { LinkSession } from '../../src/link/session.js';
import { hostApp, trustingPair } from '../support/link-hosts.js';
import { ChannelKind, openChannel } from '../../proxy/wire/index.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe('the link listener before a client is anyone', () => {
  it('drops a client that connects and says nothing, within seconds, and a session outlives that', async () => {
    const hosts = await trustingPair();
    cleanups.push(hosts.remove);
    const listener = await LinkListener.listen('127.0.0.1', 0, { ...hosts.destination, application: hostApp('destination') });
    cleanups.push(() => listener.close());
    const accepted = new Promise<LinkSession>((resolve) => listener.once('session', (session) => resolve(session)));
    const { session } = await dialLink(`wss://127.0.0.1:${listener.port}`, { ...hosts.source, application: hostApp('source') });
    cleanups.push(() => session.isOpen && session.close());
    const remote = await accepted;

    const silent = connect(listener.port, '127.0.0.1');
    silent.on('error', () => {});
    await once(silent, 'connect');
    const startedAt = Date.now();
    await once(silent, 'close');
    const heldMs = Date.now() - startedAt;
    expect(heldMs).toBeLessThan(20_000);

    // the session was up all along, past the window a silent client gets, and still carries bytes
    expect(session.isOpen && remote.isOpen).toBe(true);
    const arrived = new Promise<string>((resolve) => remote.once('channel', (channel) => {
      let text = '';
      channel.readable.on('data', (chunk: Buffer) => (text += chunk.toString()));
      channel.readable.on('end', () => resolve(text));
    }));
    openChannel(session, ChannelKind.IMAGE_FILE, 'inventory.img').writable.end('still here');
    expect(await arrived).toBe('still here');
    await sleep(10);
  }, 60_000);
});
