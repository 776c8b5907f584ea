import type { LinkSession } from '../src/link/index.js';
import type { RestoredTree } from '../src/criu/index.js';
import type { DestinationMigration, LazyCopyGuard, LazyPageStore, Mode } from '../proxy/index.js';
import type { IncusClient } from './incus-client.js';
import type { InFlight, MigrationProgress } from './in-flight.js';
import type { AgentLog } from './agent-log.js';
import type { MigrationRecords } from './migration-records.js';

/** What every step of the agent's destination side works with. */
export interface DestinationContext {
  readonly incus: IncusClient;
  /** One directory per incoming migration below this one, and the restores' helpers. */
  readonly cacheDir: string;
  readonly records: MigrationRecords;
  readonly log: AgentLog;
  readonly criuBinary: string | undefined;
  readonly inFlight: InFlight;
}

/** How long a restore waits for the pages of its migration, and they for it. */
export const PAGES_WAIT_MS = 5 * 60_000;

/** One migration this host receives, from the moment its source announced it. */
export interface Incoming {
  readonly mode: Mode;
  readonly session: LinkSession;
  /** What the source sends, stored here, and what this host says back. */
  readonly migration: DestinationMigration;
  readonly lazyPages: LazyPageStore;
  readonly instance: string;
  readonly peer: string;
  readonly dir: string;
  readonly startedAt: Date;
  readonly complete: Promise<void>;
  readonly progress: MigrationProgress;
  /**
   * How long the restore may run: the instance's user.haul.restore-timeout as the source read it,
   * at most this agent's own (restoreTimeoutFor). (Asking incusd here would cost 5 s: during an
   * incoming move it answers for the instance only after its "monitor is unresponsive" timeout.)
   */
  readonly restoreTimeoutMs: number;
  /**
   * Where the source's incusd listens for its peers (IP:port), as far as this host cuts them: Incus'
   * own migration connects there. Only addresses of the host the link came from (cuttableEndpoints).
   */
  readonly sourceManagerAddresses: readonly string[];
  /** Lazy: the restored container's processes, once CRIU reported them (they run on pages still arriving). */
  restored?: RestoredTree;
  /** Lazy: holds `restored` in step with the link until every page is here. */
  guard?: LazyCopyGuard;
}
