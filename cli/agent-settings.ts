import { hostname } from 'node:os';
import { InvalidArgumentError, type Command } from 'commander';
import { DEFAULT_RETENTION, findRealCriu, parseHaulMode, type HaulMode, type Peer, type Retention } from '../plugin/index.js';
import { peerName } from '../src/link/index.js';
import { AgentConfigError, readAgentConfig, type AgentConfig } from './agent-config.js';
import { parseListen } from './host-and-address.js';

/** What `haul agent run` (and `haul doctor`) run with: flags first, then agent.conf, then defaults. */
export interface AgentSettings {
  readonly incusDir: string;
  readonly listen: { address: string; port: number } | undefined;
  readonly peers: readonly Peer[];
  readonly name: string;
  readonly defaultMode: HaulMode;
  /** Undefined where none is named and none of KNOWN_CRIU_LOCATIONS is there. */
  readonly criu: string | undefined;
  readonly restoreTimeoutS: number;
  readonly records: Retention;
}

/** The flags `haul agent run` and `haul doctor` share with agent.conf, as commander parsed them. */
export interface AgentFlags {
  readonly config: string;
  readonly incusDir: string;
  readonly listen?: { address: string; port: number };
  readonly peer: Peer[];
  readonly name?: string;
  readonly defaultMode?: HaulMode;
  readonly criu?: string;
  readonly restoreTimeout?: number;
}

export const DEFAULT_RESTORE_TIMEOUT_S = 300;

export function parsePeer(value: string, previous: Peer[]): Peer[] {
  const match = /^([^=]+)=(.+:\d+)$/.exec(value);
  if (!match) throw new InvalidArgumentError('expected NAME=HOST:PORT');
  // the name binds a certificate in the trust store and names records: the trust store's grammar
  return [...previous, { name: checkedPeerName(match[1]!), url: match[2]! }];
}

/** A peer's name, or this host's own as its peers will call it: a commander parse error when it is not one. */
function checkedPeerName(value: string): string {
  try {
    return peerName(value);
  } catch (error) {
    throw new InvalidArgumentError(error instanceof Error ? error.message : String(error));
  }
}

/** The hostname, the default name: said as such when it cannot be one. */
function hostNameAsPeerName(name: string): string {
  try {
    return peerName(name);
  } catch {
    throw new AgentConfigError(`this host's hostname ${JSON.stringify(name)} cannot be its name for its peers (letters, digits, ".", "_" and "-", at most 63, starting with a letter or digit): set name in the agent's configuration, or pass --name`);
  }
}

/** A mode, or off; 'precopy', the older spelling of pre-copy, still means it. */
export function parseAgentMode(value: string): HaulMode {
  const mode = parseHaulMode(value);
  if (!mode) throw new InvalidArgumentError(`expected pre-copy, lazy or off, got ${JSON.stringify(value)}`);
  return mode;
}

/** A commander parser of a number above 0, in `unit` (its error names the unit). */
export function positiveNumber(unit: 'seconds' | 'minutes'): (value: string) => number {
  return (value) => {
    const number = Number(value);
    if (!Number.isFinite(number) || number <= 0) throw new InvalidArgumentError(`expected a number of ${unit} above 0, got ${JSON.stringify(value)}`);
    return number;
  };
}

export const parsePositiveSeconds = positiveNumber('seconds');

/** Reads agent.conf (the --config file) and lays the flags given on the command line over it. */
export async function agentSettings(command: Command, flags: AgentFlags): Promise<AgentSettings> {
  const config: AgentConfig = await readAgentConfig(flags.config, command.getOptionValueSource('config') === 'cli');
  const given = (option: string): boolean => command.getOptionValueSource(option) === 'cli';
  // a setting from the file goes through the flag's own parser, and says where it came from
  const fromFile = <T>(setting: string, value: string | number, parse: (text: string) => T): T => {
    try {
      return parse(String(value));
    } catch (error) {
      throw new AgentConfigError(`${flags.config}: ${setting}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    }
  };
  const pick = <T>(option: string, flag: T | undefined, setting: keyof AgentConfig, parse: (text: string) => T): T | undefined => {
    const value = config[setting];
    if (given(option) || value === undefined) return flag;
    return fromFile(setting, value as string | number, parse);
  };
  const criu = pick('criu', flags.criu, 'criu', String) ?? (await findRealCriu());
  const peersFromFile = Object.entries(config.peers ?? {}).flatMap(([name, address]) => fromFile(`peers.${name}`, `${name}=${address}`, (text) => parsePeer(text, [])));
  return {
    incusDir: pick('incusDir', flags.incusDir, 'incus-dir', String)!,
    listen: pick('listen', flags.listen, 'listen', parseListen),
    peers: given('peer') || peersFromFile.length === 0 ? flags.peer : peersFromFile,
    name: pick('name', flags.name === undefined ? undefined : checkedPeerName(flags.name), 'name', checkedPeerName) ?? hostNameAsPeerName(hostname()),
    defaultMode: pick('defaultMode', flags.defaultMode, 'default-mode', parseAgentMode) ?? 'pre-copy',
    criu,
    restoreTimeoutS: pick('restoreTimeout', flags.restoreTimeout, 'restore-timeout', parsePositiveSeconds) ?? DEFAULT_RESTORE_TIMEOUT_S,
    records: {
      maxAgeDays: config.records?.['max-age-days'] ?? DEFAULT_RETENTION.maxAgeDays,
      maxEntries: config.records?.['max-entries'] ?? DEFAULT_RETENTION.maxEntries,
      maxIncomingMiB: config.records?.['max-incoming-mib'] ?? DEFAULT_RETENTION.maxIncomingMiB,
    },
  };
}
