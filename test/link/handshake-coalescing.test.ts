import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { WebSocketServer, type WebSocket } from 'ws';
import { dialLink } from '../../src/link/dialer.js';
import { FrameType, encodeFrame } from '../../src/link/frame.js';
import { PROTOCOL_VERSION, helloReplyFrame } from '../../src/link/handshake.js';
import type { IncomingChannel } from '../../src/link/channels.js';
import { hostApp } from '../support/link-hosts.js';
import { ChannelKind } from '../../proxy/wire/index.js';

describe('the dialler right after its handshake', () => {
  it('keeps channels the peer opens in the same TCP segment as its handshake reply', async () => {
    const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await once(server, 'listening');
    server.on('connection', (ws: WebSocket & { _socket?: { cork(): void; uncork(): void } }) => {
      ws.once('message', () => {
        // the reply and two OPEN frames leave in one write, so they arrive in one read
        ws._socket!.cork();
        ws.send(helloReplyFrame({ protocol_version: PROTOCOL_VERSION, resumed: false, application: Buffer.from(hostApp('destination').hello), received: [], refusal: '' }));
        for (const channel of [2, 4]) {
          ws.send(encodeFrame({ type: FrameType.OPEN, kind: channel === 2 ? ChannelKind.CONTROL : ChannelKind.LAZY_REQUESTS, channel, offset: 0n, payload: Buffer.from(`ch${channel}`) }));
        }
        ws._socket!.uncork();
      });
    });
    const opened: IncomingChannel[] = [];
    try {
      const { session } = await dialLink(`ws://127.0.0.1:${(server.address() as AddressInfo).port}`, { insecure: true, application: hostApp('source') });
      session.on('channel', (channel) => opened.push(channel));
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(opened.map((channel) => channel.name)).toEqual(['ch2', 'ch4']);
      session.close();
    } finally {
      server.close();
    }
  });
});
