import { join } from 'node:path';
import type { Command } from 'commander';
import { TrustStore } from '../src/link/index.js';

/** Where a host keeps its link identity and trust store, unless --state-dir says otherwise. */
export const DEFAULT_STATE_DIR = process.env['HAUL_STATE_DIR'] ?? '/var/lib/haul';

/** The --state-dir a (sub)command runs with. */
export const stateDirOf = (command: Command): string => (command.optsWithGlobals() as { stateDir: string }).stateDir;

/** This host's trust store, kept in its state folder. */
export const openTrustStore = (stateDir: string): Promise<TrustStore> => TrustStore.open(join(stateDir, 'trust.json'));
