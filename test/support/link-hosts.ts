import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadOrCreateIdentity, type Identity } from '../../src/link/identity.js';
import type { ApplicationHandshake } from '../../src/link/index.js';
import { hostHandshake, type HostSelf } from '../../proxy/index.js';
import { TrustStore } from '../../src/link/trust-store.js';
import { CRIU_VERSION, DESTINATION_CRIU_VERSION } from './paths.js';

/** A host of this pass of the CRIU matrix (test/support/paths.ts), unless told another CRIU version. */
export function hostInfo(role: 'source' | 'destination', criuVersion = role === 'source' ? CRIU_VERSION : DESTINATION_CRIU_VERSION): HostSelf {
  return { criu_version: criuVersion, page_size: 4096, architecture: 'x64', capabilities: ['pre-copy', 'lazy'], haul_version: '0.1.0', role };
}

/** A migration host's part of the link handshake (proxy/host-hello.ts), as hostInfo describes it. */
export function hostApp(role: 'source' | 'destination', criuVersion?: string): ApplicationHandshake {
  return hostHandshake(criuVersion === undefined ? hostInfo(role) : hostInfo(role, criuVersion));
}

export interface TestLinkHost {
  readonly identity: Identity;
  readonly trust: TrustStore;
  remove(): void;
}

/** A host's state folder with its own identity and an empty trust store. */
export async function linkHost(label: string): Promise<TestLinkHost> {
  const dir = mkdtempSync(join(tmpdir(), `haul-link-${label}-`));
  const identity = await loadOrCreateIdentity(dir);
  const trust = await TrustStore.open(join(dir, 'trust.json'));
  return { identity, trust, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Two hosts that trust each other. */
export async function trustingPair(): Promise<{ source: TestLinkHost; destination: TestLinkHost; remove(): void }> {
  const [source, destination] = await Promise.all([linkHost('source'), linkHost('destination')]);
  await source.trust.add('destination', destination.identity.fingerprint);
  await destination.trust.add('source', source.identity.fingerprint);
  return { source, destination, remove: () => [source, destination].forEach((h) => h.remove()) };
}
