import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import { readFile, rename, writeFile } from 'node:fs/promises';
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
 * The invitations this host has issued and not yet seen redeemed, kept in a file of its state dir
 * (the command line issues them, the running agent redeems them): their secrets' hashes and when
 * each expires. A secret is good once.
 */
export class PairingOffers {
  constructor(private readonly path: string) {}

  private async read(now: number): Promise<Array<{ hash: string; expiresAt: number }>> {
    const text = await readFile(this.path, 'utf8').catch(() => '[]');
    let offers: unknown;
    try {
      offers = JSON.parse(text);
    } catch {
      offers = [];
    }
    return (Array.isArray(offers) ? offers : []).filter((offer: { hash?: unknown; expiresAt?: unknown }) => typeof offer.hash === 'string' && typeof offer.expiresAt === 'number' && offer.expiresAt > now);
  }

  private async write(offers: Array<{ hash: string; expiresAt: number }>): Promise<void> {
    await writeFile(`${this.path}.new`, JSON.stringify(offers), { mode: 0o600 });
    await rename(`${this.path}.new`, this.path);
  }

  /** A new secret, good for one pairing within `ttlMs`. */
  async issue(ttlMs: number, now = Date.now()): Promise<string> {
    const secret = randomBytes(32).toString('base64url');
    await this.write([...(await this.read(now)), { hash: digest(secret).toString('hex'), expiresAt: now + ttlMs }]);
    return secret;
  }

  /** Whether `secret` is one issued, not expired, not used; using it up. */
  async redeem(secret: string, now = Date.now()): Promise<boolean> {
    const offers = await this.read(now);
    const presented = digest(secret);
    const match = offers.find((offer) => {
      const hash = Buffer.from(offer.hash, 'hex');
      return hash.length === presented.length && timingSafeEqual(hash, presented);
    });
    if (!match) return false;
    await this.write(offers.filter((offer) => offer !== match));
    return true;
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
  const reply = (status: number, body: Record<string, unknown>): void => void response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  if (!fingerprint) return reply(401, { error: 'a client certificate is required' });
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) return reply(413, { error: 'too large' });
    chunks.push(chunk);
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
  if (typeof secret !== 'string' || !(await service.offers.redeem(secret))) return reply(403, { error: 'no such pairing token: expired, used, or never issued here' });
  const known = service.trust.list().find((peer) => peer.name === name);
  if (known && known.fingerprint !== fingerprint) return reply(409, { error: `this host already trusts another certificate as ${name}: haul trust remove ${name} there first` });
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
