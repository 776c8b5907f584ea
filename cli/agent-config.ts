import { readFile } from 'node:fs/promises';
import { parse, TomlError } from 'smol-toml';

/** Where `haul agent run` reads its settings unless --config names another file. */
export const DEFAULT_AGENT_CONFIG = '/etc/haul/agent.conf';

/** What /etc/haul/agent.conf may set; each is the agent's flag of the same name, which overrides it. */
export interface AgentConfig {
  readonly listen?: string;
  readonly name?: string;
  readonly 'incus-dir'?: string;
  readonly 'default-mode'?: string;
  readonly 'restore-timeout'?: number;
  readonly criu?: string;
  /** peer name → HOST:PORT of its agent */
  readonly peers?: Readonly<Record<string, string>>;
  readonly records?: { readonly 'max-age-days'?: number; readonly 'max-entries'?: number; readonly 'max-incoming-mib'?: number };
}

/** A configuration file haul cannot use: it says which file and which setting. */
export class AgentConfigError extends Error {
  override readonly name = 'AgentConfigError';
  readonly code = 'HAUL_AGENT_CONFIG';
}

const STRINGS = ['listen', 'name', 'incus-dir', 'default-mode', 'criu'] as const;
const NUMBERS = ['restore-timeout'] as const;
const RECORD_NUMBERS = ['max-age-days', 'max-entries', 'max-incoming-mib'] as const;

/**
 * The agent's configuration from `path` (TOML). A missing file is an empty configuration when it
 * is the default path (a host configured by flags alone), and an error when it was named.
 */
export async function readAgentConfig(path: string, named: boolean): Promise<AgentConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT' && !named) return {};
    throw new AgentConfigError(`cannot read ${path}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
  let parsed: Record<string, unknown>;
  try {
    parsed = parse(text);
  } catch (error) {
    const where = error instanceof TomlError ? ` (line ${error.line}, column ${error.column})` : '';
    throw new AgentConfigError(`${path} is not TOML${where}: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`, { cause: error });
  }
  const fail = (setting: string, what: string): never => {
    throw new AgentConfigError(`${path}: ${setting} ${what}`);
  };
  const known = new Set<string>([...STRINGS, ...NUMBERS, 'peers', 'records']);
  for (const key of Object.keys(parsed)) if (!known.has(key)) fail(key, `is not a setting haul knows (it knows ${[...known].join(', ')})`);
  for (const key of STRINGS) if (key in parsed && typeof parsed[key] !== 'string') fail(key, 'must be a string');
  for (const key of NUMBERS) if (key in parsed && (typeof parsed[key] !== 'number' || !((parsed[key] as number) > 0))) fail(key, 'must be a number above 0');
  const table = (key: string): Record<string, unknown> | undefined => {
    const value = parsed[key];
    if (value === undefined) return undefined;
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return fail(key, 'must be a table ([' + key + '])');
    return value as Record<string, unknown>;
  };
  const peers = table('peers');
  for (const [name, address] of Object.entries(peers ?? {})) if (typeof address !== 'string' || !/^.+:\d+$/.test(address)) fail(`peers.${name}`, 'must be "HOST:PORT"');
  const records = table('records');
  for (const key of Object.keys(records ?? {})) {
    if (!(RECORD_NUMBERS as readonly string[]).includes(key)) fail(`records.${key}`, `is not a setting haul knows (it knows ${RECORD_NUMBERS.join(', ')})`);
    const value = records![key];
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) fail(`records.${key}`, 'must be a whole number above 0');
  }
  return parsed as AgentConfig;
}
