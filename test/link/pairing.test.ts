import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LinkListener, PairingError, PairingOffers, decodePairingToken, dialLink, encodePairingToken, joinPeer } from '../../src/link/index.js';
import { TrustStore } from '../../src/link/trust-store.js';
import { hostApp, linkHost, type TestLinkHost } from '../support/link-hosts.js';

describe('pairing two hosts in one step: a one-time token from one, a join from the other', () => {
  const cleanups: Array<() => void | Promise<void>> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  /** Host A: its agent's listener, answering pairing with offers kept in its state dir. */
  async function inviting(host: TestLinkHost): Promise<{ listener: LinkListener; offers: PairingOffers; address: string }> {
    const dir = mkdtempSync(join(tmpdir(), 'haul-pairing-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const offers = new PairingOffers(join(dir, 'pairing-offers'));
    const listener = await LinkListener.listen('127.0.0.1', 0, { identity: host.identity, trust: host.trust, application: hostApp('destination'), pairing: { offers, trust: host.trust, name: 'host-a' } });
    cleanups.push(() => listener.close());
    return { listener, offers, address: `127.0.0.1:${listener.port}` };
  }
  const hosts = async (): Promise<[TestLinkHost, TestLinkHost]> => {
    const pair = await Promise.all([linkHost('a'), linkHost('b')]);
    cleanups.push(() => pair.forEach((host) => host.remove()));
    return pair;
  };

  it('leaves each host trusting the other, so that a link between them works both ways', async () => {
    const [a, b] = await hosts();
    const { offers, address } = await inviting(a);
    const token = decodePairingToken(encodePairingToken({ name: 'host-a', address, fingerprint: a.identity.fingerprint, secret: await offers.issue(60_000) }));
    expect(await joinPeer(token, { identity: b.identity, trust: b.trust, name: 'host-b' })).toBe('host-a');
    expect(b.trust.trusts(a.identity.fingerprint)?.name).toBe('host-a');
    expect(a.trust.trusts(b.identity.fingerprint)?.name).toBe('host-b');
    const { session } = await dialLink(`wss://${address}`, { identity: b.identity, trust: b.trust, application: hostApp('source') }, { peerName: 'host-a' });
    session.close();
    // a trusted certificate is the peer it was trusted as, and no other
    await expect(dialLink(`wss://${address}`, { identity: b.identity, trust: b.trust, application: hostApp('source') }, { peerName: 'host-z' })).rejects.toMatchObject({ code: 'HAUL_LINK_UNTRUSTED', message: expect.stringMatching(/trusts as host-a, not host-z's/) });
  });

  it('takes a token once, and not after it expired', async () => {
    const [a, b] = await hosts();
    const { offers, address } = await inviting(a);
    const token = { name: 'host-a', address, fingerprint: a.identity.fingerprint, secret: await offers.issue(60_000) };
    await joinPeer(token, { identity: b.identity, trust: b.trust, name: 'host-b' });
    const [, c] = await hosts();
    await expect(joinPeer(token, { identity: c.identity, trust: c.trust, name: 'host-c' })).rejects.toThrow(/refused the pairing \(403\)/);
    const stale = { ...token, secret: await offers.issue(60_000, Date.now() - 120_000) };
    await expect(joinPeer(stale, { identity: c.identity, trust: c.trust, name: 'host-c' })).rejects.toBeInstanceOf(PairingError);
    expect(a.trust.trusts(c.identity.fingerprint)).toBeUndefined();
    expect(c.trust.list()).toEqual([]);
  });

  it('takes a token once even when joins race for it', async () => {
    const [a] = await hosts();
    const { offers, address } = await inviting(a);
    const token = { name: 'host-a', address, fingerprint: a.identity.fingerprint, secret: await offers.issue(60_000) };
    const joiners = await Promise.all([hosts(), hosts()]).then((pairs) => pairs.flat());
    const outcomes = await Promise.allSettled(joiners.map((joiner, index) => joinPeer(token, { identity: joiner.identity, trust: joiner.trust, name: `joiner-${index}` })));
    expect(outcomes.filter((outcome) => outcome.status === 'fulfilled')).toHaveLength(1);
    expect(a.trust.list()).toHaveLength(1);
  });

  it('answers a join at once when no token is outstanding, and does not wait for a body that trickles in', async () => {
    const [a, b] = await hosts();
    const { offers, address } = await inviting(a);
    await expect(joinPeer({ name: 'host-a', address, fingerprint: a.identity.fingerprint, secret: 'x'.repeat(43) }, { identity: b.identity, trust: b.trust, name: 'host-b' })).rejects.toThrow(/403.*no pairing token is outstanding/);
    await offers.issue(60_000);
    // a request that says it has more than a pairing request can have is refused before it is read
    const { connect } = await import('node:tls');
    const socket = connect({ host: '127.0.0.1', port: Number(address.split(':')[1]), key: b.identity.key, cert: b.identity.cert, rejectUnauthorized: false });
    socket.on('error', () => {});
    await new Promise((resolve) => socket.once('secureConnect', resolve));
    socket.write('POST /haul/pair HTTP/1.1\r\nhost: a\r\ncontent-length: 100000\r\n\r\n{');
    const answer = await new Promise<string>((resolve) => socket.once('data', (chunk: Buffer) => resolve(chunk.toString())));
    expect(answer).toMatch(/^HTTP\/1\.1 413/);
    socket.destroy();
  });

  it('sends its secret only to the certificate the token names: an impostor at the address learns nothing', async () => {
    const [a, b] = await hosts();
    const [impostor] = await hosts();
    const real = await inviting(a);
    const fake = await inviting(impostor);
    const token = { name: 'host-a', address: fake.address, fingerprint: a.identity.fingerprint, secret: await real.offers.issue(60_000) };
    await expect(joinPeer(token, { identity: b.identity, trust: b.trust, name: 'host-b' })).rejects.toThrow(/presented certificate .*not .*: not paired/);
    expect(impostor.trust.list()).toEqual([]);
    expect(b.trust.list()).toEqual([]);
    // the secret never left: the real host still takes it
    expect(await joinPeer({ ...token, address: real.address }, { identity: b.identity, trust: b.trust, name: 'host-b' })).toBe('host-a');
  });

  it('refuses what is not a token, names that could be anything, and a name the inviting host already gave another certificate', async () => {
    expect(() => decodePairingToken('hello')).toThrow(PairingError);
    expect(() => decodePairingToken(encodePairingToken({ name: '../x', address: '127.0.0.1:1', fingerprint: 'ab'.repeat(32), secret: 'x'.repeat(43) }))).toThrow(/peer name/);
    const [a, b] = await hosts();
    const { offers, address } = await inviting(a);
    await a.trust.add('host-b', 'cd'.repeat(32));
    await expect(joinPeer({ name: 'host-a', address, fingerprint: a.identity.fingerprint, secret: await offers.issue(60_000) }, { identity: b.identity, trust: b.trust, name: 'host-b' })).rejects.toThrow(/409.*already trusts another certificate as host-b/);
    expect(b.trust.list()).toEqual([]);
  });

  it('a trust store another process changed, or removed, is seen by the running one', async () => {
    const [a] = await hosts();
    const path = (a.trust as unknown as { path: string }).path;
    const other = await TrustStore.open(path);
    await other.add('late', 'ef'.repeat(32));
    expect(a.trust.trusts('ef'.repeat(32))?.name).toBe('late');
    rmSync(path);
    expect(a.trust.trusts('ef'.repeat(32))).toBeUndefined();
  });
});
