import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createInterface } from 'node:readline';
import { packageFile } from '../package-files.js';

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

/**
 * The peers this host trusts, pinned by certificate fingerprint, kept as JSON in the state folder.
 * A running agent sees what `haul trust add|remove` (another process) wrote there since: each look
 * re-reads the file when it changed.
 */
export class TrustStore {
  private loaded: string;

  private constructor(
    private readonly path: string,
    private peers: TrustedPeer[],
  ) {
    this.loaded = versionOf(path);
  }

  /** The file's peers, if another process changed it since this store last read or wrote it. */
  private refresh(): void {
    const changed = versionOf(this.path);
    if (changed === this.loaded) return;
    // removed: trusting no one is what an emptied store means
    if (changed === 'none') {
      this.peers = [];
      this.loaded = changed;
      return;
    }
    try {
      const parsed = JSON.parse(readFileSync(this.path, 'utf8')) as { peers?: TrustedPeer[] };
      this.peers = (parsed.peers ?? []).filter((peer) => typeof peer.name === 'string' && typeof peer.fingerprint === 'string' && FINGERPRINT.test(peer.fingerprint));
    } catch {
      // half-written or gone: keep what was read last, look again next time
      return;
    }
    this.loaded = changed;
  }

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
    this.refresh();
    return this.peers;
  }

  trusts(fingerprint: string): TrustedPeer | undefined {
    this.refresh();
    return this.peers.find((peer) => peer.fingerprint === fingerprint);
  }

  async add(name: string, fingerprint: string): Promise<TrustedPeer> {
    const normalised = normaliseFingerprint(fingerprint);
    return this.changing(async () => {
      if (this.peers.some((peer) => peer.name === name)) throw new Error(`a peer named ${name} is already trusted`);
      const peer = { name, fingerprint: normalised, added: new Date().toISOString() };
      this.peers = [...this.peers.filter((p) => p.fingerprint !== normalised), peer];
      await this.save();
      return peer;
    });
  }

  async remove(nameOrFingerprint: string): Promise<boolean> {
    return this.changing(async () => {
      const before = this.peers.length;
      this.peers = this.peers.filter((peer) => peer.name !== nameOrFingerprint && peer.fingerprint !== nameOrFingerprint.toLowerCase());
      if (this.peers.length === before) return false;
      await this.save();
      return true;
    });
  }

  /**
   * A change, read from the file and written back while this store holds its lock: the agent (a
   * pairing) and `haul trust` (another process) may change it at once, and neither may lose the
   * other's peer. The lock is the kernel's (flock, held by hold-lock.pl): it ends with its holder,
   * whatever way that ends, so none is ever left behind or taken from a live holder.
   */
  private async changing<T>(change: () => Promise<T>): Promise<T> {
    await mkdir(dirname(this.path), { recursive: true, mode: 0o700 });
    const holder = await holdLock(`${this.path}.lock`);
    try {
      this.refresh();
      return await change();
    } finally {
      await holder.release();
    }
  }

  private async save(): Promise<void> {
    const fresh = `${this.path}.${process.pid}.${randomBytes(4).toString('hex')}.new`;
    await writeFile(fresh, `${JSON.stringify({ peers: this.peers }, null, 2)}\n`, { mode: 0o600 });
    await rename(fresh, this.path);
    this.loaded = versionOf(this.path);
  }
}

const LOCK_WAIT_S = 10;
/** Part of Debian's perl-base, which is Essential. */
const PERL = '/usr/bin/perl';

/** Holds `path` locked (flock) until `release`; rejects when it stays locked past LOCK_WAIT_S. */
async function holdLock(path: string): Promise<{ release(): Promise<void> }> {
  // looked up when a change is made: a command that only reads the store needs no perl program
  const holder = spawn(PERL, [packageFile('src/link/hold-lock.pl', import.meta.url), path, String(LOCK_WAIT_S)], { stdio: ['pipe', 'pipe', 'pipe'] });
  holder.stdin.on('error', () => {});
  let said = '';
  holder.stderr.on('data', (chunk: Buffer) => (said += chunk.toString()));
  const exited = once(holder, 'exit').then(() => {}, () => {});
  await new Promise<void>((resolve, reject) => {
    const lines = createInterface({ input: holder.stdout });
    lines.once('line', (line) => (line === 'locked' ? resolve() : reject(new Error(`the lock on ${path}: ${line}`))));
    holder.once('error', (error) => reject(new Error(`cannot lock ${path}: ${error.message}`, { cause: error })));
    holder.once('exit', () => reject(new Error(`cannot lock the trust store: ${said.trim() || `${path} could not be locked`}`)));
  });
  return {
    release: async () => {
      holder.stdin.end();
      await exited;
    },
  };
}

/** Which version of the file is there: its inode (each save renames a new one in) and its change time. */
function versionOf(path: string): string {
  try {
    const stat = statSync(path, { bigint: true });
    return `${stat.ino}:${stat.mtimeNs}`;
  } catch {
    return 'none';
  }
}
