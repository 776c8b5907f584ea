import { readdir } from 'node:fs/promises';
import type { LinkSession } from '../src/link/index.js';
import { isPagesFileName, type HeaderLayout } from '../src/criu/index.js';
import type { SourceMigration } from '../proxy/index.js';
import type { IncusClient } from './incus-client.js';
import type { InFlight, MigrationProgress } from './in-flight.js';
import type { AgentLog } from './agent-log.js';
import type { MigrationRecord, MigrationRecords } from './migration-records.js';

/** What every step of the agent's source side works with. */
export interface SourceContext {
  readonly incus: IncusClient;
  readonly records: MigrationRecords;
  readonly log: AgentLog;
  readonly inFlight: InFlight;
}

/** The container's root as the agent reaches it, and the time of the snapshot Incus sent. */
export interface DiskCatchUp {
  /** The container's init, whose root and mounts are walked. */
  readonly initPid: number;
  readonly root: string;
  readonly sinceMs: number;
}

/** One migration this agent sends, from the moment its peer accepted it. */
export interface Outgoing {
  readonly session: LinkSession;
  /** What is said between the two hosts about this migration. */
  readonly migration: SourceMigration;
  /** Incus' checkpoint directory, the dump's -D as liblxc gives it. */
  readonly dir: string;
  readonly record: Omit<MigrationRecord, 'totalMs' | 'result'>;
  readonly startedAt: Date;
  readonly progress: MigrationProgress;
  /** Set where Incus' own transfer leaves the destination's disk older than the frozen source. */
  readonly disk: DiskCatchUp | undefined;
}

/** How many page-data files Incus' checkpoint directory holds (none, when every page went through haul). */
export async function countCheckpointPageFiles(dir: string): Promise<number> {
  return (await readdir(dir)).filter(isPagesFileName).length;
}

/** What a mode's start needs besides the migration: where its helpers go, and the dump as liblxc calls it. */
export interface ModeStart {
  /** The migration's own directory for its action scripts and page-server socket. */
  readonly workDir: string;
  readonly layout: HeaderLayout;
  /** The action script liblxc gave the dump (Incus' own steps). */
  readonly incusScript: string;
  /** The hook's process, which becomes CRIU. */
  readonly callerPid: number | undefined;
  readonly args: readonly string[];
}
