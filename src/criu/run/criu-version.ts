import { execFile } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { delimiter, isAbsolute, join } from 'node:path';
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

/** Versions asked of a binary, by the file's identity: a CRIU replaced in place (an upgrade) is asked anew. */
const versions = new Map<string, Promise<CriuVersion>>();

/**
 * The version of `binary`: asked of it once, then known for as long as the file stays the same.
 * A lazy restore needs it (the page-server header layout) between the freeze and the restore, where
 * running `criu --version` cost 30-40 ms of the workload's downtime on the test machine.
 */
export async function criuVersion(binary = DEFAULT_CRIU): Promise<CriuVersion> {
  const file = await identity(binary);
  const key = file ?? `unresolved:${binary}`;
  let version = versions.get(key);
  if (!version) {
    version = promisify(execFile)(binary, ['--version']).then(({ stdout }) => parseCriuVersion(stdout));
    versions.set(key, version);
    // a failure is not kept: the next call asks again
    version.catch(() => versions.delete(key));
  }
  return version;
}

/** The file `binary` runs (as execFile finds it on PATH), as path, inode and change time; undefined if not found. */
async function identity(binary: string): Promise<string | undefined> {
  const candidates = binary.includes('/') ? [binary] : (process.env['PATH'] ?? '').split(delimiter).filter(isAbsolute).map((dir) => join(dir, binary));
  for (const path of candidates) {
    const file = await stat(path).catch(() => undefined);
    if (file?.isFile()) return `${path}:${file.dev}:${file.ino}:${file.size}:${file.mtimeMs}:${file.ctimeMs}`;
  }
  return undefined;
}

/** CRIU 4.2 widened the page-server header from 24 to 32 bytes, with no way to tell on the wire. */
export function headerLayoutFor(version: CriuVersion): HeaderLayout {
  return version.major > 4 || (version.major === 4 && version.minor >= 2) ? 'criu-4.2' : 'criu-4.1';
}
