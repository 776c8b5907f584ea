import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { DEFAULT_KEEPALIVE_MS, DEFAULT_RESUME_WINDOW_MS, HANDSHAKE_TIMEOUT_MS, requireSecurity, type EndpointOptions } from './endpoint-options.js';
import { FRAME_HEADER_SIZE, MAX_FRAME_PAYLOAD } from './frame.js';
import { PROTOCOL_VERSION, helloFrame, parseHelloReply } from './handshake.js';
import { peerFingerprint, type Identity } from './identity.js';
import { LinkProtocolError } from './link-errors.js';
import type { HelloReply } from './messages.js';
import { LinkSession } from './session.js';
import type { TrustStore } from './trust-store.js';
import { firstMessage, webSocketTransport } from './ws-transport.js';

export interface DialedLink {
  readonly session: LinkSession;
  /** What the peer's application said of itself in the handshake (EndpointOptions.application). */
  readonly peer: Buffer;
}

/** Why a connection attempt failed, in words an operator can act on. */
function explain(error: Error, secure: boolean): Error {
  const code = (error as NodeJS.ErrnoException).code ?? '';
  if (NOT_TLS_CODES.has(code)) {
    return new LinkProtocolError(`TLS handshake failed: the peer does not speak TLS (is it listening with --insecure?) [${error.message}]`, { code: 'HAUL_LINK_REFUSED', cause: error });
  }
  if (!secure && code === 'ECONNRESET') {
    return new LinkProtocolError(`the peer closed the connection: it expects TLS, and this side was started with --insecure [${error.message}]`, { code: 'HAUL_LINK_REFUSED', cause: error });
  }
  return error;
}

/** What OpenSSL, through node, says of an answer that is not TLS (plain HTTP from an --insecure peer). */
const NOT_TLS_CODES = new Set(['ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_PACKET_LENGTH_TOO_LONG', 'EPROTO']);

/** A connection, and the fingerprint of the certificate its peer presented (undefined without TLS). */
interface Connection {
  readonly ws: WebSocket;
  /** The connection under the WebSocket, as the upgrade handed it over. */
  readonly socket: Duplex;
  readonly fingerprint: string | undefined;
}

async function connectOnce(url: string, secure: { identity?: Identity; trust?: TrustStore }, peerName?: string): Promise<Connection> {
  const ws = new WebSocket(url, {
    maxPayload: FRAME_HEADER_SIZE + MAX_FRAME_PAYLOAD,
    handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
    // WebSocket masking protects HTTP caches from what browser scripts send; both ends here are
    // haul, over TLS or on loopback, and masking every page costs a copy and a pass over it. An
    // all-zero mask is a valid key that ws recognises and skips.
    generateMask: (mask: Buffer) => void mask.fill(0),
    ...(secure.identity ? { key: secure.identity.key, cert: secure.identity.cert, rejectUnauthorized: false } : {}),
  });
  return new Promise((resolve, reject) => {
    let pinningError: Error | undefined;
    let fingerprint: string | undefined;
    let socket: Duplex | undefined;
    ws.once('upgrade', (response: IncomingMessage) => {
      socket = response.socket;
      if (!secure.trust) return;
      fingerprint = peerFingerprint(response.socket as TLSSocket) ?? 'none';
      const trusted = secure.trust.trusts(fingerprint);
      if (!trusted) {
        pinningError = new LinkProtocolError(`untrusted certificate: the peer at ${url} presented ${fingerprint}, which is not in this host's trust store (haul trust add NAME ${fingerprint})`, { code: 'HAUL_LINK_UNTRUSTED' });
        ws.terminate();
      } else if (peerName !== undefined && trusted.name !== peerName) {
        // another trusted host's certificate at this peer's address: that host is not this peer
        pinningError = new LinkProtocolError(`the peer at ${url} presented the certificate this host trusts as ${trusted.name}, not ${peerName}'s`, { code: 'HAUL_LINK_UNTRUSTED' });
        ws.terminate();
      }
    });
    ws.once('unexpected-response', (_request, response: IncomingMessage) => {
      ws.terminate();
      reject(new Error(`the peer refused the connection: ${response.statusCode} ${response.statusMessage ?? ''}`.trim() + (response.statusCode === 403 ? ' (it does not trust this host\'s certificate: haul trust add there)' : '')));
    });
    ws.once('open', () => (pinningError ? reject(pinningError) : socket ? resolve({ ws, socket, fingerprint }) : reject(new Error(`${url} opened without an upgrade`))));
    ws.on('error', (error) => reject(pinningError ?? explain(error, Boolean(secure.identity))));
    ws.once('close', () => reject(pinningError ?? new Error(`the connection to ${url} closed during the handshake`)));
  });
}

async function handshake(ws: WebSocket, session: LinkSession, options: EndpointOptions, resume: boolean): Promise<HelloReply> {
  ws.send(helloFrame({ protocol_version: PROTOCOL_VERSION, session_id: session.sessionId, resume, application: Buffer.from(options.application.hello), received: resume ? session.progress() : [] }));
  try {
    return parseHelloReply(await firstMessage(ws, HANDSHAKE_TIMEOUT_MS));
  } catch (error) {
    ws.terminate();
    throw error;
  }
}

/**
 * Dials a link listener and opens a session. If the connection drops, it re-dials (backing off up
 * to a second between tries) and resumes the session where every channel stopped; after the resume
 * window the session is aborted with the reason. `peerName`: the listener's certificate must be the
 * one trusted under that name, not merely any trusted one.
 */
export async function dialLink(url: string, options: EndpointOptions, dial: { readonly peerName?: string } = {}): Promise<DialedLink> {
  const { hostname } = new URL(url);
  const secure = requireSecurity(options, hostname);
  if (url.startsWith('ws:') && !options.insecure) throw new Error(`${url} is plain WebSocket: use wss://, or --insecure on loopback`);
  const session = new LinkSession('dialer', randomBytes(16), !secure.identity, options.limits, options.application.crcFreeKinds);
  const keepaliveMs = options.keepaliveMs ?? DEFAULT_KEEPALIVE_MS;
  // a resume must reach the same listener: the certificate this first connection presented
  const { ws, socket, fingerprint: pinned } = await connectOnce(url, secure, dial.peerName);
  const reply = await handshake(ws, session, options, false);
  const problem = options.application.check(reply.application, 'dialer');
  if (problem) {
    ws.close(1008, 'incompatible');
    throw new LinkProtocolError(`${url} cannot work with this host: ${problem}`, { code: 'HAUL_LINK_INCOMPATIBLE' });
  }
  // The transport takes the socket over now (holding whatever came behind the reply), but attaches
  // once the caller has had its turn: channels the peer opened at once are announced then, to
  // 'channel' listeners the caller added right after dialLink resolved.
  const transport = webSocketTransport(ws, socket, keepaliveMs);
  setImmediate(() => session.attach(transport));

  const window = options.resumeWindowMs ?? DEFAULT_RESUME_WINDOW_MS;
  session.on('detached', (reason) => {
    (async () => {
      const deadline = Date.now() + window;
      let lastError: Error | undefined;
      for (let delay = 50; session.isOpen && Date.now() < deadline; delay = Math.min(delay * 2, 1000)) {
        try {
          const { ws: next, socket: nextSocket, fingerprint } = await connectOnce(url, secure);
          if (fingerprint !== pinned) {
            next.terminate(); // before the handshake: the session id is not for another host's ears
            throw new LinkProtocolError(`${url} now presents certificate ${fingerprint}, not ${pinned} that the session began with`, { code: 'HAUL_LINK_FOREIGN_PEER' });
          }
          const resumed = await handshake(next, session, options, true);
          if (!resumed.resumed) {
            next.terminate();
            throw new LinkProtocolError(`${url} answered the resume as a new session`, { code: 'HAUL_LINK_REFUSED' });
          }
          if (!session.isOpen) return next.close(1000, 'session ended');
          session.attach(webSocketTransport(next, nextSocket, keepaliveMs), resumed.received);
          return;
        } catch (error) {
          lastError = error instanceof Error ? error : new Error(String(error));
          if (lastError instanceof LinkProtocolError && lastError.code === 'HAUL_LINK_REFUSED') break;
          await sleep(Math.min(delay, Math.max(0, deadline - Date.now())));
        }
      }
      session.abort(`lost the connection to ${url} (${reason}) and could not resume within ${window / 1000} s${lastError ? `: ${lastError.message}` : ''}`, lastError);
    })().catch((error: unknown) => session.isOpen && session.abort(`could not resume the connection to ${url}: ${error instanceof Error ? error.message : String(error)}`, error));
  });
  return { session, peer: reply.application };
}
