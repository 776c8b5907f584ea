import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { CRIU } from './paths.js';

/** The `Error (file:line): …` lines of a CRIU log, less the one every run here logs harmlessly. */
export function criuErrors(logFile: string): string[] {
  let log: string;
  try {
    log = readFileSync(logFile, 'utf8');
  } catch {
    return [`(no log at ${logFile})`];
  }
  return log
    .split('\n')
    .filter((line) => /Error \(/.test(line) && !/RLIMIT_NOFILE/.test(line));
}

export interface CriuProcess {
  readonly child: ChildProcess;
  /** Resolves once CRIU reports readiness on --status-fd (page-server, lazy-pages, lazy dump). */
  readonly ready: Promise<void>;
  /** Resolves when CRIU exits 0; rejects with its log's errors otherwise. */
  readonly done: Promise<void>;
}

/**
 * Runs `criu ACTION ARGS -o LOG -v4 --status-fd 3`. Test scaffolding only; haul's own CRIU runner is
 * built in src/ (issue 3).
 */
export function startCriu(action: string, args: readonly string[], logFile: string, withStatusFd = false): CriuProcess {
  const statusArgs = withStatusFd ? ['--status-fd', '3'] : [];
  const child = spawn(CRIU, [action, ...args, '-o', logFile, '-v4', ...statusArgs], {
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (code === 0) resolve();
      else {
        const errors = criuErrors(logFile).join('\n');
        reject(new Error(`criu ${action} exited with ${code ?? signal}:\n${errors}\n${stderr}`));
      }
    });
  });
  const statusPipe = child.stdio[3] as NodeJS.ReadableStream | null;
  const ready = new Promise<void>((resolve, reject) => {
    if (!withStatusFd || statusPipe === null) return resolve();
    statusPipe.once('data', () => resolve());
    done.then(() => reject(new Error(`criu ${action} exited before it was ready`)), reject);
  });
  ready.catch(() => {});
  done.catch(() => {});
  return { child, ready, done };
}

export async function runCriu(action: string, args: readonly string[], logFile: string): Promise<void> {
  await startCriu(action, args, logFile).done;
}
