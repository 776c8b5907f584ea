/**
 * What the CRIU hook asks the local agent over the agent's unix socket, one JSON line:
 * the CRIU call liblxc made (`dump` or `restore` and its arguments), and the arguments to exec
 * CRIU with instead (unchanged when haul stays out of it), or why the call must fail.
 */
export interface HookRequest {
  readonly call: 'dump' | 'restore';
  readonly args: readonly string[];
  /** The asking process: paths in `args` are in its mount namespace (/proc/PID/root reaches them). */
  readonly pid?: number;
}

/** A hook request line that is not what the hook sends. */
export class HookProtocolError extends Error {
  override readonly name = 'HookProtocolError';
  readonly code = 'HAUL_HOOK_PROTOCOL';
}

/** More arguments than any CRIU call liblxc makes (about forty), far below what would cost memory. */
const MAX_HOOK_ARGS = 4096;

/**
 * The request the hook wrote (`{"call":…,"pid":…,"args":[…]}`, one JSON line), checked: the agent
 * picks the source or the destination role by `call` and hands `args` to CRIU, so nothing else passes.
 */
export function parseHookRequest(line: string): HookRequest {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    throw new HookProtocolError('the hook request is not JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new HookProtocolError('the hook request is not a JSON object');
  const { call, args, pid } = parsed as Record<string, unknown>;
  if (call !== 'dump' && call !== 'restore') throw new HookProtocolError(`the hook asked for ${JSON.stringify(call)?.slice(0, 40)}, not dump or restore`);
  if (!Array.isArray(args) || args.length > MAX_HOOK_ARGS || !args.every((arg) => typeof arg === 'string')) {
    throw new HookProtocolError('the hook request\'s args are not a list of strings');
  }
  if (pid !== undefined && !(Number.isInteger(pid) && (pid as number) > 0 && (pid as number) <= 0x7fffffff)) {
    throw new HookProtocolError(`the hook request's pid ${JSON.stringify(pid)?.slice(0, 40)} is not a process id`);
  }
  return pid === undefined ? { call, args } : { call, args, pid: pid as number };
}

export type HookReply =
  | {
      readonly args: readonly string[];
      /**
       * A unix socket the hook connects to and hands CRIU as `--ps-socket FD` (after `args`, which
       * then hold --page-server): haul's page server for the dump.
       */
      readonly pageServerSocket?: string;
      readonly note?: string;
    }
  | { readonly error: string };

/**
 * The reply as the hook reads it: `error ` and why the call must fail, on one line; or an optional
 * `ps-socket PATH` line, then `args N` and the N arguments, each ended by a NUL (no argument of a
 * program can hold one). The hook is sh and a few lines of perl (Debian's perl-base is Essential):
 * no JSON parser there, and no Node either, whose start alone costs 0.12 s here, inside the
 * restore's downtime.
 */
export function hookReplyText(reply: HookReply): string {
  if ('error' in reply) return `error ${reply.error.replace(/\s*\n\s*/g, ' ')}\n`;
  const socket = reply.pageServerSocket === undefined ? '' : `ps-socket ${reply.pageServerSocket.replace(/\n/g, '')}\n`;
  return `${socket}args ${reply.args.length}\n${reply.args.map((arg) => `${arg.replace(/\0/g, '')}\0`).join('')}`;
}

/** Written into Incus' checkpoint directory: Incus carries it to the destination's restore directory. */
export const MIGRATION_ID_FILE = 'haul-migration.json';

/** The agent's hook socket beside incusd's own (the hook finds it from incusd's INCUS_DIR). */
export function hookSocketPath(incusDir: string): string {
  return `${incusDir}/haul-agent.sock`;
}

/** The value after `flag` in a CRIU argument list. */
export function argumentOf(args: readonly string[], flag: string): string | undefined {
  const at = args.indexOf(flag);
  return at >= 0 ? args[at + 1] : undefined;
}
