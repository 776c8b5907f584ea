import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MIGRATION_ID_FILE } from './hook-protocol.js';

/** `haul agent hook` exits with this when the agent says the CRIU call must fail. */
export const REFUSED_EXIT = 75;

/** Marks a file as haul's hook, so that uninstall removes only what install wrote. */
const MARK = '# haul-criu-hook';

/**
 * The hook liblxc runs as `criu`: a few lines of POSIX sh (liblxc needs the real CRIU to replace
 * it, and Node cannot exec). It prints nothing on stdout (liblxc parses `criu --version` there),
 * passes every call but the final dump and the restore straight to the real CRIU, asks the haul
 * agent about those two, and ends in an exec of CRIU with the agent's arguments. With no agent
 * socket, no agent answering, or haul itself gone, the call runs unchanged and the move stays native.
 */
export function hookScript(realCriu: string, node: string, hookClient: string): string {
  const quote = (value: string): string => `'${value.replace(/'/g, `'\\''`)}'`;
  return `#!/bin/sh
${MARK}: installed by \`haul agent install\`; remove with \`haul agent uninstall\`.
real_criu=${quote(realCriu)}
case "\${1:-}" in
  dump|restore) ;;
  *) exec "$real_criu" "$@" ;;
esac
socket="\${INCUS_DIR:-/var/lib/incus}/haul-agent.sock"
# a restore whose pages went through haul cannot run without haul: say so rather than let CRIU fail
# on missing pages (the file is the one the source agent leaves in Incus' checkpoint directory)
needs_haul() {
  [ "$1" = restore ] || return 1
  dir=; previous=
  for arg in "$@"; do [ "$previous" = -D ] && dir=$arg; previous=$arg; done
  [ -n "$dir" ] && [ -f "$dir/${MIGRATION_ID_FILE}" ]
}
if ! [ -S "$socket" ]; then
  needs_haul "$@" && { echo "haul: this restore needs the pages haul moved, and no haul agent listens at $socket" >&2; exit 1; }
  exec "$real_criu" "$@"
fi
args=$(${quote(node)} ${quote(hookClient)} --socket "$socket" -- "$@" </dev/null)
case $? in
  0) eval "set -- $args" ;;
  ${REFUSED_EXIT}) exit 1 ;;  # the agent says this call must fail (it said why on stderr)
  *) needs_haul "$@" && { echo "haul: this restore needs the pages haul moved, and haul could not run" >&2; exit 1; } ;;
esac
exec "$real_criu" "$@"
`;
}

/** Shell words for `eval "set -- …"`: each argument single-quoted. */
export function shellWords(args: readonly string[]): string {
  return args.map((arg) => `'${arg.replace(/'/g, `'\\''`)}'`).join(' ');
}

/** `hookClient`: the compiled plugin/hook-client.js the hook runs to ask the agent. */
export async function installHook(hookDir: string, realCriu: string, node: string, hookClient: string): Promise<string> {
  const path = join(hookDir, 'criu');
  if (path === realCriu) throw new Error(`the hook would replace the real CRIU at ${realCriu}: install it into another directory`);
  const existing = await readFile(path, 'utf8').catch(() => undefined);
  if (existing !== undefined && !existing.includes(MARK)) throw new Error(`${path} exists and is not haul's hook; not replacing it`);
  await mkdir(hookDir, { recursive: true });
  await writeFile(path, hookScript(realCriu, node, hookClient));
  await chmod(path, 0o755);
  return path;
}

export async function uninstallHook(hookDir: string): Promise<boolean> {
  const path = join(hookDir, 'criu');
  const existing = await readFile(path, 'utf8').catch(() => undefined);
  if (existing === undefined) return false;
  if (!existing.includes(MARK)) throw new Error(`${path} is not haul's hook; not removing it`);
  await rm(path);
  return true;
}
