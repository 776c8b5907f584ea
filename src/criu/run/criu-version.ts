import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { delimiter, join, resolve } from 'node:path';
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
/** `criu --version` answers at once; one that does not is not waited for. */
const VERSION_TIMEOUT_MS = 10_000;

/**
 * The version of `binary`: asked of it once, then known for as long as the file stays the same.
 * A lazy restore needs it (the page-server header layout) between the freeze and the restore, where
 * running `criu --version` cost 30-40 ms of the workload's downtime on the test machine. A package
 * upgrade replaces the file (dpkg writes every file of the new version anew), wrappers included.
 */
export async function criuVersion(binary = DEFAULT_CRIU): Promise<CriuVersion> {
  const file = await resolveBinary(binary);
  // not found as execvp would find it: asked as given (execFile says what is wrong), never kept
  if (!file) return ask(binary);
  let version = versions.get(file.identity);
  if (!version) {
    version = ask(file.path);
    versions.set(file.identity, version);
    // a failure is not kept: the next call asks again
    version.catch(() => versions.delete(file.identity));
  }
  return version;
}

async function ask(binary: string): Promise<CriuVersion> {
  const { stdout } = await promisify(execFile)(binary, ['--version'], { timeout: VERSION_TIMEOUT_MS });
  return parseCriuVersion(stdout);
}

/**
 * The file `binary` names, found as execvp finds a bare name (the first executable file on PATH,
 * /bin:/usr/bin without one), with its identity: path, inode, size and times.
 */
async function resolveBinary(binary: string): Promise<{ path: string; identity: string } | undefined> {
  const dirs = (process.env['PATH'] ?? '/bin:/usr/bin').split(delimiter);
  const candidates = binary.includes('/') ? [binary] : dirs.map((dir) => join(dir || '.', binary));
  for (const path of candidates) {
    const file = await stat(path).catch(() => undefined);
    if (!file?.isFile() || !(await access(path, constants.X_OK).then(() => true, () => false))) continue;
    return { path, identity: `${resolve(path)}:${file.dev}:${file.ino}:${file.size}:${file.mtimeMs}:${file.ctimeMs}` };
  }
  return undefined;
}

/** CRIU 4.2 widened the page-server header from 24 to 32 bytes, with no way to tell on the wire. */
export function headerLayoutFor(version: CriuVersion): HeaderLayout {
  return version.major > 4 || (version.major === 4 && version.minor >= 2) ? 'criu-4.2' : 'criu-4.1';
}
