import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';

export interface TrustedPeer {
  readonly name: string;
  readonly fingerprint: string;
  readonly added: string;
}

const FINGERPRINT = /^[0-9a-f]{64}$/;

/** Normalises a sha256 fingerprint as openssl or haul print it (any case, with or without colons). */
export function normaliseFingerprint(text: string): string {
  const fingerprint = text.replaceAll(':', '').trim().toLowerCase();
  if (!FINGERPRINT.test(fingerprint)) throw new Error(`"${text}" is not a sha256 certificate fingerprint (64 hex digits)`);
  return fingerprint;
}

/** The peers this host trusts, pinned by certificate fingerprint, kept as JSON in the state folder. */
export class TrustStore {
  private constructor(
    private readonly path: string,
    private peers: TrustedPeer[],
  ) {}

  static async open(path: string): Promise<TrustStore> {
    try {
      const parsed = JSON.parse(await readFile(path, 'utf8')) as { peers?: TrustedPeer[] };
      return new TrustStore(path, parsed.peers ?? []);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return new TrustStore(path, []);
      throw new Error(`cannot read the trust store ${path}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  list(): readonly TrustedPeer[] {
    return this.peers;
  }

  trusts(fingerprint: string): TrustedPeer | undefined {
    return this.peers.find((peer) => peer.fingerprint === fingerprint);
  }

  async add(name: string, fingerprint: string): Promise<TrustedPeer> {
    const normalised = normaliseFingerprint(fingerprint);
    if (this.peers.some((peer) => peer.name === name)) throw new Error(`a peer named ${name} is already trusted`);
    const peer = { name, fingerprint: normalised, added: new Date().toISOString() };
    this.peers = [...this.peers.filter((p) => p.fingerprint !== normalised), peer];
    await this.save();
    return peer;
  }

  async remove(nameOrFingerprint: string): Promise<boolean> {
    const before = this.peers.length;
    this.peers = this.peers.filter((peer) => peer.name !== nameOrFingerprint && peer.fingerprint !== nameOrFingerprint.toLowerCase());
    if (this.peers.length === before) return false;
    await this.save();
    return true;
  }

  private async save(): Promise<void> {
    await mkdir(dirname(this.path), { recursive: true, mode: 0o700 });
    await writeFile(`${this.path}.new`, `${JSON.stringify({ peers: this.peers }, null, 2)}\n`, { mode: 0o600 });
    await rename(`${this.path}.new`, this.path);
  }
}
