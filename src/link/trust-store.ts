import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

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
   * other's peer.
   */
  private async changing<T>(change: () => Promise<T>): Promise<T> {
    await mkdir(dirname(this.path), { recursive: true, mode: 0o700 });
    const lock = `${this.path}.lock`;
    const deadline = Date.now() + LOCK_WAIT_MS;
    for (;;) {
      try {
        const handle = await open(lock, 'wx', 0o600);
        await handle.writeFile(String(process.pid)).finally(() => handle.close());
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
        // a holder that died holding it left it behind (an empty file: one still writing its pid)
        const holder = Number((await readFile(lock, 'utf8').catch(() => '')).trim());
        if (holder > 0 && !isAlive(holder)) {
          await rm(lock, { force: true });
          continue;
        }
        if (Date.now() > deadline) throw new Error(`the trust store ${this.path} stayed locked by process ${holder || '?'} for ${LOCK_WAIT_MS / 1000} s (${lock})`);
        await sleep(20);
      }
    }
    try {
      this.refresh();
      return await change();
    } finally {
      await rm(lock, { force: true });
    }
  }

  private async save(): Promise<void> {
    const fresh = `${this.path}.${process.pid}.${randomBytes(4).toString('hex')}.new`;
    await writeFile(fresh, `${JSON.stringify({ peers: this.peers }, null, 2)}\n`, { mode: 0o600 });
    await rename(fresh, this.path);
    this.loaded = versionOf(this.path);
  }
}

const LOCK_WAIT_MS = 10_000;

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
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
