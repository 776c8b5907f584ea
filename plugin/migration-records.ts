import { appendFile, readFile, rename, writeFile } from 'node:fs/promises';
import type { HaulMode } from './haul-mode.js';
import type { AgentLog } from './agent-log.js';

/** One migration as the agent saw it, appended to its record file when it ends (or is skipped). */
export interface MigrationRecord {
  readonly id: string;
  readonly instance: string;
  /** source: this host dumped; destination: this host restored. */
  readonly role: 'source' | 'destination';
  readonly peer: string;
  /** The hosts by the names the agents go by (--name). */
  readonly source?: string;
  readonly target?: string;
  readonly mode: HaulMode;
  /** Pages and bytes that went through haul's link. */
  readonly pages: number;
  readonly bytes: number;
  /** pages-*.img files found in Incus' checkpoint directory once the dump sent its pages (source). */
  readonly checkpointPageFiles?: number;
  readonly startedAt: string;
  readonly totalMs: number;
  /**
   * source: moved (its copy ended, the destination runs it), failed, passed-through (native move);
   * destination: restored, failed ('placed' in records written before restores were followed).
   */
  readonly result: 'moved' | 'restored' | 'placed' | 'passed-through' | 'failed';
  /** Source: from the dump's start (the freeze) until the destination reported the restore. */
  readonly downtimeMs?: number;
  readonly error?: string;
}

/**
 * The agent's record file (`haul status` reads it). Recording is best effort and comes after what
 * a migration must do (fail Incus' migration, let incusd go on): a record that cannot be written
 * (a full disk) is said in the log, and never stops a caller.
 */
export class MigrationRecords {
  /** The writes so far, one after another: a prune rewrites the file, and no append may fall between its read and its rename. */
  private writes: Promise<unknown> = Promise.resolve();

  constructor(
    readonly path: string,
    private readonly hostName = '',
    private readonly log: AgentLog = () => {},
  ) {}

  /** Runs `write` once the writes before it have ended, whatever their outcome. */
  private inTurn<T>(write: () => Promise<T>): Promise<T> {
    const turn = this.writes.then(write, write);
    this.writes = turn.catch(() => {});
    return turn;
  }

  /** Appends `record`; resolves false (and logs why) when it could not be written, never rejects. */
  async add(record: MigrationRecord): Promise<boolean> {
    const ends = record.role === 'source' ? { source: this.hostName, target: record.peer } : { source: record.peer, target: this.hostName };
    const whole = { ...ends, ...record };
    try {
      await this.inTurn(() => appendFile(this.path, `${JSON.stringify(whole)}\n`, { mode: 0o600 }));
      return true;
    } catch (error) {
      this.log(`could not record migration ${record.id} of ${record.instance} (${record.result}) in ${this.path}: ${error instanceof Error ? error.message : String(error)}`, 'error');
      return false;
    }
  }

  async all(): Promise<MigrationRecord[]> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch {
      return [];
    }
    return text.split('\n').filter(Boolean).map((line) => JSON.parse(line) as MigrationRecord);
  }

  /**
   * Keeps the records of the last `maxAgeDays` days, at most the newest `maxEntries` of them;
   * resolves how many it dropped. Records added meanwhile wait for it, and are kept.
   */
  prune(maxAgeDays: number, maxEntries: number, now = Date.now()): Promise<number> {
    return this.inTurn(async () => {
      const all = await this.all();
      const since = now - maxAgeDays * 86_400_000;
      const kept = all.filter((record) => !(Date.parse(record.startedAt) < since)).slice(-maxEntries);
      if (kept.length === all.length) return 0;
      const fresh = `${this.path}.pruned`;
      await writeFile(fresh, kept.map((record) => `${JSON.stringify(record)}\n`).join(''), { mode: 0o600 });
      await rename(fresh, this.path);
      return all.length - kept.length;
    });
  }
}
