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
  /**
   * How long the hook waits for the answer before it runs CRIU unchanged (a dump) or fails (a
   * restore that needs haul). The agent answers within it; a hook that closes the socket before the
   * answer has given up, and the agent abandons what it began for that call.
   */
  readonly answer_within_ms?: number;
}

/** How long the hook waits for the agent, by call (the restore's waits for the pages). */
export const DUMP_ANSWER_MS = 30_000;
export const RESTORE_ANSWER_MS = 6 * 60_000;
/** The agent answers this long before the hook's deadline: the answer must still reach it. */
const ANSWER_MARGIN_MS = 3_000;

/**
 * When the agent must have answered a request it got at `receivedAt`: by the hook's own word
 * (hooks installed before it was sent wait DUMP_ANSWER_MS for a dump), less a margin, never past
 * the longest wait a hook has.
 */
export function answerDeadline(request: Pick<HookRequest, 'call' | 'answer_within_ms'>, receivedAt: number): number {
  const said = request.answer_within_ms;
  const fallback = request.call === 'dump' ? DUMP_ANSWER_MS : RESTORE_ANSWER_MS;
  const within = typeof said === 'number' && Number.isFinite(said) && said > 0 ? Math.min(said, RESTORE_ANSWER_MS) : fallback;
  return receivedAt + Math.max(within - ANSWER_MARGIN_MS, within / 2);
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
  const answerWithin = (parsed as Record<string, unknown>)['answer_within_ms'];
  if (answerWithin !== undefined && !(Number.isInteger(answerWithin) && (answerWithin as number) > 0 && (answerWithin as number) <= MAX_ANSWER_WITHIN_MS)) {
    throw new HookProtocolError(`the hook request's answer_within_ms ${JSON.stringify(answerWithin)?.slice(0, 40)} is not a wait haul can keep`);
  }
  return {
    call,
    args,
    ...(pid === undefined ? {} : { pid: pid as number }),
    ...(answerWithin === undefined ? {} : { answer_within_ms: answerWithin as number }),
  };
}

/** The longest a hook may say it waits for the agent's answer (the hook's own waits are seconds). */
const MAX_ANSWER_WITHIN_MS = 3_600_000;

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

/** `args` with the value of `flag` (the word after it) set to `value`. */
export function withArgument(args: readonly string[], flag: string, value: string): string[] {
  return args.map((arg, at) => (args[at - 1] === flag ? value : arg));
}
