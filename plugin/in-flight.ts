import { readFile, rename, writeFile } from 'node:fs/promises';
import type { Mode } from '../proxy/index.js';

/** A migration in progress as `haul status` shows it. */
export interface MigrationProgress {
  readonly id: string;
  readonly instance: string;
  readonly role: 'source' | 'destination';
  readonly peer: string;
  readonly mode: Mode;
  phase: string;
  pages: number;
  /** Pages expected in all, when known (lazy: the runs the dump left). */
  totalPages?: number;
  readonly startedAt: string;
}

const WRITE_EVERY_MS = 500;
/** In the agent's state dir. */
export const IN_FLIGHT_FILE = 'in-flight.json';

export async function readInFlight(path: string): Promise<MigrationProgress[]> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as MigrationProgress[];
  } catch {
    return [];
  }
}

/**
 * The agent's migrations in progress, written to a small JSON file (at most twice a second, and
 * atomically) for `haul status` to read; an entry leaves when its migration ends and is recorded.
 */
export class InFlight {
  private readonly entries = new Map<string, MigrationProgress>();
  private timer: NodeJS.Timeout | undefined;
  private dirty = false;

  constructor(private readonly path: string) {}

  /** Writes the (empty) list now: what an agent that ended without closing left there goes. */
  async replaceLeftovers(): Promise<void> {
    this.dirty = true;
    await this.write();
  }

  /** How many migrations are in progress. */
  get size(): number {
    return this.entries.size;
  }

  start(entry: MigrationProgress): MigrationProgress {
    this.entries.set(entry.id, entry);
    this.changed();
    return entry;
  }

  update(entry: MigrationProgress, change: Partial<Pick<MigrationProgress, 'phase' | 'pages' | 'totalPages'>>): void {
    Object.assign(entry, change);
    this.changed();
  }

  end(id: string): void {
    this.entries.delete(id);
    this.changed();
  }

  private changed(): void {
    this.dirty = true;
    // a full disk must not take the agent down with the moves it carries: the next change retries
    this.timer ??= setTimeout(() => void this.write().catch(() => (this.dirty = true)), WRITE_EVERY_MS);
    this.timer.unref();
  }

  private async write(): Promise<void> {
    this.timer = undefined;
    if (!this.dirty) return;
    this.dirty = false;
    const temporary = `${this.path}.tmp`;
    await writeFile(temporary, JSON.stringify([...this.entries.values()]));
    await rename(temporary, this.path);
  }

  async close(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.entries.clear();
    this.dirty = true;
    await this.write().catch(() => {});
  }
}
