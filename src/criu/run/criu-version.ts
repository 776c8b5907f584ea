import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { HeaderLayout } from '../page-server/protocol.js';
import { DEFAULT_CRIU } from './criu-process.js';

export interface CriuVersion {
  readonly major: number;
  readonly minor: number;
  readonly patch: number;
}

/** Parses `criu --version` ("Version: 4.1.1", then a GitID line on development builds). */
export function parseCriuVersion(output: string): CriuVersion {
  const match = /^Version:\s*(\d+)\.(\d+)(?:\.(\d+))?/m.exec(output);
  if (!match) throw new Error(`cannot read a CRIU version from: ${output.trim().slice(0, 200)}`);
  return { major: Number(match[1]), minor: Number(match[2]), patch: Number(match[3] ?? 0) };
}

/** `criu --version` answers at once; one that does not is not waited for. */
const VERSION_TIMEOUT_MS = 10_000;

/**
 * The version of `binary`, asked of it each time: it may be a wrapper that runs another CRIU than it
 * did the last time (the test bed's second host does; so may a host's own), or have been upgraded
 * since. A lazy restore needs it between the freeze and the restore, where the question costs
 * 30-40 ms on the test machine: the destination asks as its migration begins
 * (proxy/destination-migration.ts), not then.
 */
export async function criuVersion(binary = DEFAULT_CRIU): Promise<CriuVersion> {
  const { stdout } = await promisify(execFile)(binary, ['--version'], { timeout: VERSION_TIMEOUT_MS });
  return parseCriuVersion(stdout);
}

/** CRIU 4.2 widened the page-server header from 24 to 32 bytes, with no way to tell on the wire. */
export function headerLayoutFor(version: CriuVersion): HeaderLayout {
  return version.major > 4 || (version.major === 4 && version.minor >= 2) ? 'criu-4.2' : 'criu-4.1';
}
