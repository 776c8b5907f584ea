import { InvalidArgumentError } from 'commander';
import { MODES, type HostSelf } from '../proxy/index.js';
import { criuVersion, PAGE_SIZE } from '../src/criu/index.js';
import { readPackageInfo } from './package-info.js';

/** `--listen ADDRESS:PORT` (an IPv6 address in brackets). */
export function parseListen(value: string): { address: string; port: number } {
  const match = /^(.+):(\d+)$/.exec(value);
  if (!match) throw new InvalidArgumentError('expected ADDRESS:PORT');
  return { address: match[1]!.replace(/^\[(.*)\]$/, '$1'), port: Number(match[2]) };
}

/**
 * What this host tells its peers in the link's handshake, which refuses a pairing that cannot work
 * (page size, architecture, the migration protocol). `migrates`: false for a host that only checks it can
 * link (haul doctor), which works without CRIU and offers no mode; `incusVersion`: the Incus an
 * agent serves, for its peers' haul doctor.
 */
export async function thisHost(role: string, criuBinary?: string, options: { readonly migrates?: boolean; readonly incusVersion?: string } = {}): Promise<HostSelf> {
  const migrates = options.migrates ?? true;
  const version = migrates ? await criuVersion(criuBinary) : await criuVersion(criuBinary).catch(() => undefined);
  return {
    criu_version: version ? `${version.major}.${version.minor}.${version.patch}` : '',
    page_size: PAGE_SIZE,
    architecture: process.arch,
    capabilities: migrates ? [...MODES] : [],
    haul_version: readPackageInfo().version,
    role,
    incus_version: options.incusVersion ?? '',
  };
}
