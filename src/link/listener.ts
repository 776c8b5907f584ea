import { EventEmitter } from 'node:events';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { WebSocketServer, type WebSocket } from 'ws';
import { DEFAULT_KEEPALIVE_MS, DEFAULT_RESUME_WINDOW_MS, HANDSHAKE_TIMEOUT_MS, requireSecurity, type EndpointOptions } from './endpoint-options.js';
import { FRAME_HEADER_SIZE, MAX_FRAME_PAYLOAD } from './frame.js';
import { PROTOCOL_VERSION, helloReplyFrame, parseHello } from './handshake.js';
import { peerFingerprint } from './identity.js';
import { LinkProtocolError, type LinkProtocolCode } from './link-errors.js';
import { PAIRING_PATH, answerPairing } from './pairing.js';
import { LinkSession, resolveLinkLimits } from './session.js';
import { firstMessage, webSocketTransport } from './ws-transport.js';

interface SessionEntry {
  readonly session: LinkSession;
  /**
   * The certificate of the connection that started the session: only it may resume the session.
   * Undefined on an --insecure link, which has no certificates: there, knowing the session id (16
   * random bytes that only ever cross loopback) is what makes a connection the session's peer.
   */
  readonly fingerprint: string | undefined;
}

interface ListenerEvents {
  /**
   * A new session from a dialler, with what its application said of itself in the handshake and
   * the remote address of the connection it came over (what the peer cannot choose, unlike what it
   * says).
   */
  session: [LinkSession, Buffer, string | undefined];
  /** A connection that was refused, and why (it never becomes a session). */
  refused: [Error];
}

/** How long a client has from connecting until its upgrade request is in (TLS handshake included). */
const PRE_SESSION_MS = 10_000;
/** Connections at once: a migration uses one per peer (a resume briefly two). */
const MAX_CONNECTIONS = 256;

/**
 * Accepts links: TLS with both certificates pinned by fingerprint (or, on loopback only, insecure),
 * a versioned handshake, and resumption of a known session on a new connection within its window.
 */
export class LinkListener extends EventEmitter<ListenerEvents> {
  private readonly sessions = new Map<string, SessionEntry>();

  private constructor(
    private readonly server: Server,
    private readonly options: EndpointOptions,
    readonly port: number,
  ) {
    super();
  }

  static async listen(address: string, port: number, options: EndpointOptions): Promise<LinkListener> {
    const { identity, trust } = requireSecurity(options, address);
    resolveLinkLimits(options.limits); // limits no session could keep fail here, not at every peer's handshake
    // Before its certificate is checked a client is nobody: it gets a few seconds for the TLS
    // handshake and the upgrade request (Node's defaults are minutes), and the connections not yet
    // a session are capped, so that no one can hold the agent's file descriptors (which its checks
    // of local connections need, src/host) by opening connections and saying nothing.
    const server = identity
      ? createHttpsServer({ key: identity.key, cert: identity.cert, requestCert: true, rejectUnauthorized: false, handshakeTimeout: PRE_SESSION_MS })
      : createHttpServer();
    server.headersTimeout = PRE_SESSION_MS;
    server.requestTimeout = PRE_SESSION_MS;
    server.maxConnections = MAX_CONNECTIONS;
    const wss = new WebSocketServer({
      server,
      maxPayload: FRAME_HEADER_SIZE + MAX_FRAME_PAYLOAD,
      verifyClient: (info: { req: IncomingMessage }, done: (ok: boolean, code?: number, message?: string) => void) => {
        if (!trust) return done(true);
        let fingerprint: string | undefined;
        try {
          fingerprint = peerFingerprint(info.req.socket as TLSSocket);
        } catch (error) {
          // a certificate node's X509 parser cannot read: nothing to pin it by
          listener.emit('refused', new LinkProtocolError('refused a peer whose certificate cannot be read', { cause: error }));
          return done(false, 401, 'unreadable client certificate');
        }
        if (!fingerprint) return done(false, 401, 'a client certificate is required');
        if (!trust.trusts(fingerprint)) {
          listener.emit('refused', new LinkProtocolError(`refused a peer with untrusted certificate ${fingerprint}`, { code: 'HAUL_LINK_UNTRUSTED' }));
          return done(false, 403, `untrusted certificate ${fingerprint}`);
        }
        done(true);
      },
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, address, () => resolve());
    });
    const bound = server.address();
    if (bound === null || typeof bound === 'string') throw new Error('the link listener has no TCP port');
    const listener = new LinkListener(server, options, bound.port);
    // plain requests: pairing, where this host offers it (its own TLS, its own checks); nothing else
    server.on('request', (request: IncomingMessage, response: ServerResponse) => {
      if (!(identity && options.pairing && request.method === 'POST' && request.url === PAIRING_PATH)) {
        response.writeHead(426, { upgrade: 'websocket', 'content-type': 'text/plain' }).end('a haul link speaks WebSocket\n');
        return;
      }
      let fingerprint: string | undefined;
      try {
        fingerprint = peerFingerprint(request.socket as TLSSocket);
      } catch {
        fingerprint = undefined; // unreadable: answerPairing refuses it
      }
      answerPairing(request, response, fingerprint, options.pairing).catch((error: unknown) => {
        listener.emit('refused', new LinkProtocolError('a pairing request failed', { cause: error }));
        if (!response.headersSent) response.writeHead(500).end();
        else response.destroy();
      });
    });
    wss.on('connection', (ws, request: IncomingMessage) => {
      // a peer that breaks the protocol makes ws emit 'error' (then 'close', which the handshake
      // and the transport hear): unheard, it would end the process before any handshake
      ws.on('error', () => {});
      const fingerprint = identity ? peerFingerprint(request.socket as TLSSocket) : undefined;
      listener.accept(ws, request.socket, fingerprint, request.socket.remoteAddress).catch((error: unknown) => {
        ws.terminate();
        listener.emit('refused', error instanceof Error ? error : new Error(String(error)));
      });
    });
    return listener;
  }

  private async accept(ws: WebSocket, socket: Socket, fingerprint: string | undefined, remoteAddress: string | undefined): Promise<void> {
    const refuse = (reason: string, code: LinkProtocolCode = 'HAUL_LINK_PROTOCOL'): void => {
      ws.send(helloReplyFrame({ protocol_version: PROTOCOL_VERSION, resumed: false, application: Buffer.from(this.options.application.hello), received: [], refusal: reason }), () => ws.close(1008, 'refused'));
      this.emit('refused', new LinkProtocolError(reason, { code }));
    };
    let hello;
    try {
      hello = parseHello(await firstMessage(ws, HANDSHAKE_TIMEOUT_MS));
    } catch (error) {
      if (error instanceof LinkProtocolError) return refuse(error.message, error.code);
      throw error; // no handshake came (closed, or too late): nobody to answer
    }
    const problem = this.options.application.check(hello.application, 'listener');
    if (problem) return refuse(problem, 'HAUL_LINK_INCOMPATIBLE');
    const key = hello.session_id.toString('hex');
    const known = this.sessions.get(key);
    if (hello.resume && !known) return refuse('no such session here to resume (it ended, or its resume window passed)');
    if (!hello.resume && known) return refuse('that session id is already in use');
    // the same pinned certificate as the connection that started it, or someone else's session
    if (known && known.fingerprint !== fingerprint) return refuse('that session belongs to another peer', 'HAUL_LINK_FOREIGN_PEER');

    const entry = known ?? { session: new LinkSession('listener', hello.session_id, !this.options.identity || Boolean(this.options.insecure), this.options.limits, this.options.application.crcFreeKinds), fingerprint };
    if (!known) this.track(key, entry);
    const transport = webSocketTransport(ws, socket, this.options.keepaliveMs ?? DEFAULT_KEEPALIVE_MS);
    const reply = { protocol_version: PROTOCOL_VERSION, resumed: Boolean(known), application: Buffer.from(this.options.application.hello), received: entry.session.progress(), refusal: '' };
    ws.send(helloReplyFrame(reply));
    entry.session.attach(transport, known ? hello.received : undefined);
    if (!known) this.emit('session', entry.session, hello.application, remoteAddress);
  }

  // Keeps a session for resumption while it is detached, for at most the resume window.
  private track(key: string, entry: SessionEntry): void {
    const { session } = entry;
    this.sessions.set(key, entry);
    let timer: NodeJS.Timeout | undefined;
    const window = this.options.resumeWindowMs ?? DEFAULT_RESUME_WINDOW_MS;
    session.on('detached', (reason) => {
      timer = setTimeout(() => {
        if (!session.attached) session.abort(`the connection was lost (${reason}) and not resumed within ${window / 1000} s`);
      }, window);
      timer.unref();
    });
    const forget = (): void => {
      clearTimeout(timer);
      this.sessions.delete(key);
    };
    session.once('aborted', forget);
    session.once('closed', forget);
  }

  async close(): Promise<void> {
    for (const { session } of this.sessions.values()) session.abort('the listener is shutting down');
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
