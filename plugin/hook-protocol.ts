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
