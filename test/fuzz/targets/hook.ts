import { HookProtocolError, hookReplyText, parseHookRequest, type HookReply } from '../../../plugin/hook-protocol.js';
import { InvariantBroken, type FuzzTarget } from '../fuzzer.js';

/** The request line as the hook's perl writes it (its js() escapes `"`, `\` and control characters). */
function perlRequestLine(call: string, pid: number, args: readonly string[]): string {
  const js = (value: string): string => `"${value.replace(/(["\\])/g, '\\$1').replace(/[\x00-\x1f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)}"`;
  return `{"call":${js(call)},"pid":${pid},"args":[${[call, ...args].map(js).join(',')}]}`;
}

export const hookRequest: FuzzTarget = {
  name: 'hook-request',
  decoder: 'plugin/hook-protocol.ts parseHookRequest (the JSON line the CRIU hook sends the agent)',
  expected: [HookProtocolError],
  seeds: () =>
    [
      perlRequestLine('dump', 4242, ['--tree', '1234', '-D', '/var/lib/incus/containers/c1/state', '--page-server', '--address', '127.0.0.1', '--port', '0']),
      perlRequestLine('restore', 1, ['-D', '/tmp/a "dir"\twith\\odd\nnames', '--lazy-pages', '--action-script', '/usr/share/lxc/hooks']),
      perlRequestLine('dump', 99, []),
    ].map((line) => Buffer.from(line)),
  run(input) {
    const request = parseHookRequest(input.toString('utf8'));
    if ((request.call !== 'dump' && request.call !== 'restore') || !request.args.every((arg) => typeof arg === 'string')) {
      throw new InvariantBroken(`a request for ${String(request.call)}`);
    }
    if (request.pid !== undefined && !(Number.isInteger(request.pid) && request.pid > 0)) throw new InvariantBroken(`pid ${request.pid}`);
    return request;
  },
};

/**
 * The reply as the hook's perl reads it (plugin/criu-hook.ts): a first line, `error …` or an
 * optional `ps-socket PATH` line, then `args N` and N NUL-ended arguments.
 */
export function readReplyAsTheHookDoes(text: string): HookReply | 'native' {
  let at = 0;
  const line = (): string | undefined => {
    if (at >= text.length) return undefined;
    const end = text.indexOf('\n', at);
    const value = end < 0 ? text.slice(at) : text.slice(at, end);
    at = end < 0 ? text.length : end + 1;
    return value;
  };
  let first = line();
  if (first === undefined) return 'native';
  const error = /^error (.*)$/s.exec(first);
  if (error) return { error: error[1]! };
  let pageServerSocket: string | undefined;
  const socket = /^ps-socket (.+)$/s.exec(first);
  if (socket) {
    pageServerSocket = socket[1]!;
    first = line();
    if (first === undefined) return 'native';
  }
  const count = /^args (\d+)$/.exec(first);
  if (!count) return 'native';
  const args: string[] = [];
  for (let n = Number(count[1]); n > 0; n--) {
    const end = text.indexOf('\0', at);
    if (end < 0) return 'native';
    args.push(text.slice(at, end));
    at = end + 1;
  }
  return pageServerSocket === undefined ? { args } : { args, pageServerSocket };
}

/**
 * Turns fuzz bytes into a reply: byte 0 picks error or arguments (with or without a page-server
 * socket), 0x01 bytes separate the strings. Arguments come from liblxc and CRIU's own arguments,
 * so any byte may be in them.
 */
function replyFrom(input: Buffer): HookReply {
  const [head = '', ...rest] = input.subarray(1).toString('utf8').split('\x01');
  switch ((input[0] ?? 0) % 3) {
    case 0:
      return { error: head };
    case 1:
      return { args: rest };
    default:
      return { args: rest, pageServerSocket: `/run/haul/${head}` };
  }
}

export const hookReply: FuzzTarget = {
  name: 'hook-reply',
  decoder: 'plugin/hook-protocol.ts hookReplyText, read back as the hook\'s perl reads it (arguments must not break the framing)',
  expected: [],
  seeds: () => [
    Buffer.from('\x00haul: the pages of migration x never arrived\nsecond line'),
    Buffer.from('\x01\x01dump\x01-D\x01/tmp/a dir\x01--page-server\x01it\'s "quoted"\nargs 3\x00'),
    Buffer.from('\x02page-server.sock\x01dump\x01--ps-socket\x01error nothing'),
  ],
  run(input) {
    const reply = replyFrom(input);
    const read = readReplyAsTheHookDoes(hookReplyText(reply));
    const expected: HookReply =
      'error' in reply
        ? { error: reply.error.replace(/\s*\n\s*/g, ' ') }
        : reply.pageServerSocket === undefined
          ? { args: reply.args.map((arg) => arg.replace(/\0/g, '')) }
          : { args: reply.args.map((arg) => arg.replace(/\0/g, '')), pageServerSocket: reply.pageServerSocket.replace(/\n/g, '') };
    if (JSON.stringify(read) !== JSON.stringify(expected)) throw new InvariantBroken(`the hook reads ${JSON.stringify(read)} for ${JSON.stringify(expected)}`);
    return read;
  },
};
