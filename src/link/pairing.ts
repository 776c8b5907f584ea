import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, readdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { checkedName } from '../name-grammars.js';
import { peerFingerprint, type Identity } from './identity.js';
import { normaliseFingerprint, type TrustStore } from './trust-store.js';

/**
 * Pairing two hosts in one step, the way `incus remote add` takes a trust token: the host that
 * invites issues a one-time token naming itself, where it listens, its certificate's fingerprint
 * and a secret; the host that joins pins that fingerprint, connects with its own certificate, and
 * only once the listener has shown the pinned certificate sends the secret, for which the listener
 * pins the joiner's certificate. Neither side ever trusts a certificate it was not shown.
 */
export const PAIRING_PATH = '/haul/pair';
const TOKEN_PREFIX = 'haul-pair-1.';
/** Host names as the agents call each other (the [peers] of agent.conf, trust store names). */
const PEER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const MAX_BODY = 4096;
/** How long a pairing request may take to arrive whole. */
const REQUEST_MS = 10_000;
/** An offer's file: the hex sha256 of its secret. */
const OFFER_NAME = /^[0-9a-f]{64}$/;

/** A pairing that cannot go on, and why: a token that is not one, a wrong or used secret, the wrong certificate. */
export class PairingError extends Error {
  override readonly name = 'PairingError';
  readonly code = 'HAUL_PAIRING';
}

export interface PairingToken {
  /** The inviting host's name, as it calls itself. */
  readonly name: string;
  /** Where its agent listens, HOST:PORT. */
  readonly address: string;
  readonly fingerprint: string;
  readonly secret: string;
}

export const peerName = (value: unknown): string => checkedName('peer name', value, PEER_NAME, 'letters, digits, ".", "_" and "-", at most 63, starting with a letter or digit');

export function encodePairingToken(token: PairingToken): string {
  return TOKEN_PREFIX + Buffer.from(JSON.stringify(token)).toString('base64url');
}

export function decodePairingToken(text: string): PairingToken {
  const fail = (why: string): never => {
    throw new PairingError(`not a haul pairing token: ${why}`);
  };
  if (!text.startsWith(TOKEN_PREFIX)) fail(`it does not start with ${TOKEN_PREFIX}`);
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(Buffer.from(text.slice(TOKEN_PREFIX.length), 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch {
    return fail('its body does not decode');
  }
  const { name, address, fingerprint, secret } = parsed;
  if (typeof address !== 'string' || !/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(address)) fail('no HOST:PORT to reach the host at');
  if (typeof secret !== 'string' || !/^[A-Za-z0-9_-]{43}$/.test(secret)) fail('no secret in it');
  let pinned: string;
  try {
    pinned = normaliseFingerprint(String(fingerprint));
  } catch {
    return fail('no certificate fingerprint in it');
  }
  return { name: peerName(name), address: address as string, fingerprint: pinned, secret: secret as string };
}

const digest = (secret: string): Buffer => createHash('sha256').update(secret).digest();

/**
 * The invitations this host has issued and not yet seen redeemed: one file per secret in a folder
 * of its state dir (the command line issues them, the running agent redeems them), named by the
 * secret's hash and holding when it expires. Redeeming is removing that file, which only one
 * caller can do: a secret is good once, however many joins race for it.
 */
export class PairingOffers {
  constructor(private readonly dir: string) {}

  private pathOf(secret: string): string {
    return join(this.dir, digest(secret).toString('hex'));
  }

  /** A new secret, good for one pairing within `ttlMs`. */
  async issue(ttlMs: number, now = Date.now()): Promise<string> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await this.dropExpired(now);
    const secret = randomBytes(32).toString('base64url');
    await writeFile(this.pathOf(secret), String(now + ttlMs), { flag: 'wx', mode: 0o600 });
    return secret;
  }

  /** Whether any invitation is outstanding (a listener with none answers a join without reading it). */
  async any(now = Date.now()): Promise<boolean> {
    await this.dropExpired(now);
    return (await readdir(this.dir).catch(() => [] as string[])).some((name) => OFFER_NAME.test(name));
  }

  /** Whether `secret` is one issued, not expired, not used; using it up. */
  async redeem(secret: string, now = Date.now()): Promise<boolean> {
    const path = this.pathOf(secret);
    const expiresAt = Number(await readFile(path, 'utf8').catch(() => 'NaN'));
    // whoever removes the file has the offer; every other caller finds it gone
    if (!(await unlink(path).then(() => true, () => false))) return false;
    return expiresAt > now;
  }

  private async dropExpired(now: number): Promise<void> {
    for (const name of await readdir(this.dir).catch(() => [] as string[])) {
      if (!OFFER_NAME.test(name)) continue;
      const expiresAt = Number(await readFile(join(this.dir, name), 'utf8').catch(() => 'NaN'));
      if (!(expiresAt > now)) await unlink(join(this.dir, name)).catch(() => {});
    }
  }
}

/** What the inviting side needs to answer a join: its offers, its trust store, its own name. */
export interface PairingService {
  readonly offers: PairingOffers;
  readonly trust: TrustStore;
  readonly name: string;
  /** Told of each pairing made, by the joiner's name and fingerprint. */
  readonly onPaired?: (name: string, fingerprint: string) => void;
}

/**
 * The listener's answer to `POST /haul/pair` from a client with certificate `fingerprint`: with a
 * good secret, the client's certificate is trusted under the name it gave.
 */
export async function answerPairing(request: IncomingMessage, response: ServerResponse, fingerprint: string | undefined, service: PairingService): Promise<void> {
  const reply = (status: number, body: Record<string, unknown>): void => {
    if (response.headersSent) return;
    response.writeHead(status, { 'content-type': 'application/json', connection: 'close' }).end(JSON.stringify(body));
  };
  if (!fingerprint) return reply(401, { error: 'a client certificate is required' });
  // nobody gets to hold a connection on a request that cannot succeed, or that trickles in
  if (!(await service.offers.any())) return reply(403, { error: 'no pairing token is outstanding on this host: haul agent token there first' });
  if (Number(request.headers['content-length'] ?? MAX_BODY + 1) > MAX_BODY) return reply(413, { error: `a pairing request is a JSON body of at most ${MAX_BODY} bytes, with its length` });
  const deadline = setTimeout(() => request.destroy(), REQUEST_MS);
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of request as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_BODY) return reply(413, { error: 'too large' });
      chunks.push(chunk);
    }
  } finally {
    clearTimeout(deadline);
  }
  let name: string;
  let secret: unknown;
  try {
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { name?: unknown; secret?: unknown };
    name = peerName(body.name);
    secret = body.secret;
  } catch (error) {
    return reply(400, { error: error instanceof Error ? error.message : 'malformed request' });
  }
  // a name this host gives another certificate is refused before the token is used up
  const known = service.trust.list().find((peer) => peer.name === name);
  if (known && known.fingerprint !== fingerprint) return reply(409, { error: `this host already trusts another certificate as ${name}: haul trust remove ${name} there first` });
  if (typeof secret !== 'string' || !(await service.offers.redeem(secret))) return reply(403, { error: 'no such pairing token: expired, used, or never issued here' });
  if (!known) await service.trust.add(name, fingerprint);
  service.onPaired?.(name, fingerprint);
  reply(200, { name: service.name });
}

/**
 * Joins the host that issued `token`: pins its certificate here (under the name it gave itself) and
 * has it pin this host's under `name`. Resolves the inviting host's name.
 */
export async function joinPeer(token: PairingToken, options: { readonly identity: Identity; readonly trust: TrustStore; readonly name: string }): Promise<string> {
  const name = peerName(options.name);
  // a conflict here is found before the other host pins anything
  const known = options.trust.list().find((peer) => peer.name === token.name);
  if (known && known.fingerprint !== token.fingerprint) throw new PairingError(`this host already trusts another certificate as ${token.name}: haul trust remove ${token.name} first`);
  const [, host, port] = /^\[?(.*?)\]?:(\d+)$/.exec(token.address)!;
  const socket: TLSSocket = tlsConnect({ host: host!, port: Number(port), key: options.identity.key, cert: options.identity.cert, rejectUnauthorized: false, ...(/^[0-9.:]+$/.test(host!) ? {} : { servername: host! }) });
  socket.on('error', () => {});
  try {
    await Promise.race([once(socket, 'secureConnect'), once(socket, 'error').then(([error]) => Promise.reject(error as Error))]);
  } catch (error) {
    socket.destroy();
    throw new PairingError(`cannot reach ${token.address}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
  // the secret goes only to the certificate the token pinned
  const presented = peerFingerprint(socket);
  if (presented !== token.fingerprint) {
    socket.destroy();
    throw new PairingError(`${token.address} presented certificate ${presented ?? 'none'}, not ${token.fingerprint} that the token names: not paired`);
  }
  const body = JSON.stringify({ name, secret: token.secret });
  const answer = await new Promise<{ status: number; body: Record<string, unknown> }>((resolve, reject) => {
    const request = httpRequest({ createConnection: () => socket, method: 'POST', path: PAIRING_PATH, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('error', reject);
      response.on('end', () => {
        let parsed: Record<string, unknown> = {};
        try {
          parsed = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
        } catch {
          // not JSON: the status says enough
        }
        resolve({ status: response.statusCode ?? 0, body: parsed });
      });
    });
    request.on('error', reject);
    request.setTimeout(10_000, () => request.destroy(new Error('no answer within 10 s')));
    request.end(body);
  }).catch((error: unknown) => {
    throw new PairingError(`pairing with ${token.address} failed: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  });
  socket.destroy();
  if (answer.status !== 200) throw new PairingError(`${token.address} refused the pairing (${answer.status}): ${typeof answer.body['error'] === 'string' ? answer.body['error'] : 'no reason given'}`);
  if (!known) await options.trust.add(token.name, token.fingerprint);
  return token.name;
}
