import type { Duplex } from 'node:stream';
import type WebSocket from 'ws';
import type { FrameTransport } from './session.js';

/**
 * A WebSocket as the link's frame transport: one binary message per message of a frame (frame.ts).
 * A keepalive ping goes out every `keepaliveMs`; a peer that answers nothing for three of them is
 * taken for dead and the connection dropped, which lets the session resume on a new one. `socket`:
 * the connection under the WebSocket (the upgrade's), corked while the session sends a batch.
 */
export function webSocketTransport(ws: WebSocket, socket: Duplex, keepaliveMs: number): FrameTransport {
  let handlers: { frame(bytes: Buffer): void; closed(reason: string): void } | undefined;
  const early: Buffer[] = [];
  let closedReason: string | undefined;
  let lastHeard = Date.now();
  const heard = (): void => void (lastHeard = Date.now());
  const keepalive = setInterval(() => {
    if (Date.now() - lastHeard > 3 * keepaliveMs) return ws.terminate();
    ws.ping();
  }, keepaliveMs);
  keepalive.unref();
  ws.on('pong', heard);
  const onMessage = (data: Buffer, isBinary: boolean): void => {
    heard();
    // a text message is not a frame: passing it on makes the session refuse it as malformed
    const bytes = isBinary ? data : Buffer.concat([Buffer.from([0]), Buffer.from(data)]);
    if (handlers) handlers.frame(bytes);
    else early.push(bytes);
  };
  // first what came in behind the handshake, then the rest, in order
  const held = heldBack.get(ws);
  if (held) {
    ws.off('message', held.listener);
    heldBack.delete(ws);
    for (const [data, isBinary] of held.messages) onMessage(data, isBinary);
  }
  ws.on('message', onMessage);
  ws.on('close', (code, reason) => {
    clearInterval(keepalive);
    closedReason = `connection closed (${code}${reason.length ? `: ${reason.toString()}` : ''})`;
    handlers?.closed(closedReason);
  });
  ws.on('error', () => {}); // 'close' follows and carries the news
  return {
    send(message, done) {
      if (ws.readyState !== ws.OPEN) return done(new Error('connection closed'));
      ws.send(message, { binary: true }, (error) => done(error ?? undefined));
    },
    batch(sends) {
      // ws writes each message as its own corked write; corking around them all makes one writev
      socket.cork();
      try {
        sends();
      } finally {
        socket.uncork();
      }
    },
    deliverTo(h) {
      handlers = h;
      for (const bytes of early.splice(0)) h.frame(bytes);
      if (closedReason !== undefined) h.closed(closedReason);
    },
    close(reason) {
      clearInterval(keepalive);
      ws.close(1000, reason.slice(0, 120));
    },
  };
}

/** The first binary message on a fresh connection: the handshake frame. */
/**
 * Messages that arrived right behind the handshake, before the transport took the socket over. ws
 * emits every message it parsed from one read at once, so frames the peer sends straight after its
 * handshake message can come in the same turn as it; without a holder they would be lost (seen:
 * a channel's OPEN dropped, then 'frame for unknown channel').
 */
const heldBack = new WeakMap<WebSocket, { messages: Array<[Buffer, boolean]>; listener: (data: Buffer, isBinary: boolean) => void }>();

export function firstMessage(ws: WebSocket, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      ws.terminate();
      reject(new Error(`no handshake from the peer within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    const onMessage = (data: Buffer): void => {
      cleanup();
      const messages: Array<[Buffer, boolean]> = [];
      const listener = (next: Buffer, isBinary: boolean): void => void messages.push([next, isBinary]);
      ws.on('message', listener);
      heldBack.set(ws, { messages, listener });
      resolve(data);
    };
    const onClose = (code: number, reason: Buffer): void => {
      cleanup();
      reject(new Error(`the peer closed the connection during the handshake (${code}${reason.length ? `: ${reason.toString()}` : ''})`));
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      ws.off('message', onMessage);
      ws.off('close', onClose);
    };
    ws.on('message', onMessage);
    ws.on('close', onClose);
  });
}
