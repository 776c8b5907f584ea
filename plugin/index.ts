/**
 * The Incus extension: an agent beside incusd, its CRIU hook, and what the agent records.
 */
export type { AgentLog, LogLevel } from './agent-log.js';
export { Agent, DEFAULT_RETENTION, InsecureAgentError, type Retention } from './agent.js';
export { diagnose } from './doctor.js';
export { incusVersionAt } from './incus-client.js';
export { KNOWN_CRIU_LOCATIONS, findRealCriu, installHook, uninstallHook } from './criu-hook.js';
export { detectIncusPackaging, unwireHook, wireHook, type HookWiring, type IncusPackaging } from './incus-wiring.js';
export { IN_FLIGHT_FILE, readInFlight, type MigrationProgress } from './in-flight.js';
export { MigrationRecords, type MigrationRecord } from './migration-records.js';
export { parseHaulMode, type HaulMode } from './haul-mode.js';
export type { Peer } from './source-role.js';
