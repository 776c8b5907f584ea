import { createConnection } from 'node:net';
import { createInterface } from 'node:readline';

/**
 * What the CRIU hook asks the local agent, one JSON line each way over the agent's unix socket:
 * the CRIU call liblxc made (`dump` or `restore` and its arguments), and the arguments to exec
 * CRIU with instead (unchanged when haul stays out of it), or why the call must fail.
 */
export interface HookRequest {
  readonly call: 'dump' | 'restore';
  readonly args: readonly string[];
  /** The asking process: paths in `args` are in its mount namespace (/proc/PID/root reaches them). */
  readonly pid?: number;
}

export type HookReply = { readonly args: readonly string[]; readonly note?: string } | { readonly error: string };

/** Written into Incus' checkpoint directory: Incus carries it to the destination's restore directory. */
export const MIGRATION_ID_FILE = 'haul-migration.json';

/** The agent's hook socket beside incusd's own (the hook finds it from incusd's INCUS_DIR). */
export function hookSocketPath(incusDir: string): string {
  return `${incusDir}/haul-agent.sock`;
}

/** Asks the agent; rejects if it cannot be reached or does not answer within `timeoutMs`. */
export function askAgent(socketPath: string, request: HookRequest, timeoutMs: number): Promise<HookReply> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the haul agent at ${socketPath} did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.once('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    const lines = createInterface({ input: socket });
    lines.on('error', () => {}); // the socket's own error listener above reports it
    lines.once('line', (line) => {
      clearTimeout(timer);
      socket.end();
      try {
        resolve(JSON.parse(line) as HookReply);
      } catch {
        reject(new Error(`the haul agent answered something that is not JSON: ${line.slice(0, 200)}`));
      }
    });
  });
}

/** The value after `flag` in a CRIU argument list. */
export function argumentOf(args: readonly string[], flag: string): string | undefined {
  const at = args.indexOf(flag);
  return at >= 0 ? args[at + 1] : undefined;
}
