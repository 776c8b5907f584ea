import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { LinkListener } from '../../src/link/listener.js';
import { hostApp } from '../support/link-hosts.js';

describe('a link listener and a peer that breaks the WebSocket protocol', () => {
  it('drops that peer, during the handshake, without an error escaping, and goes on listening', async () => {
    const listener = await LinkListener.listen('127.0.0.1', 0, { insecure: true, application: hostApp('destination') });
    try {
      const refused: Error[] = [];
      listener.on('refused', (error: Error) => refused.push(error));
      const peer = new WebSocket(`ws://127.0.0.1:${listener.port}`);
      peer.on('error', () => {});
      await new Promise((resolve) => peer.once('open', resolve));
      // a frame with a reserved opcode (0x3), masked as a client's must be: ws' Receiver fails it
      // with an 'error' on the listener's side of the connection
      (peer as unknown as { _socket: import('node:net').Socket })._socket.write(Buffer.from([0x83, 0x80, 0, 0, 0, 0]));
      await new Promise((resolve) => peer.once('close', resolve));
      await expect.poll(() => refused.length, { timeout: 10_000 }).toBeGreaterThan(0);
      const next = new WebSocket(`ws://127.0.0.1:${listener.port}`);
      next.on('error', () => {});
      await expect(new Promise((resolve, reject) => next.once('open', resolve).once('error', reject))).resolves.toBeUndefined();
      next.terminate();
    } finally {
      await listener.close();
    }
  });
});
