import { constants } from 'node:fs';
import { access, chmod, mkdir, open, readFile, realpath, rename, rm, writeFile } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { DUMP_ANSWER_MS, MIGRATION_ID_FILE, RESTORE_ANSWER_MS } from './hook-protocol.js';
import { shellWord } from '../src/shell-words.js';
import { packageFile } from '../src/package-files.js';

/** How long the hook waits for the agent's answer, by call (the restore's waits for the pages); it tells the agent. */
const DUMP_ANSWER_S = DUMP_ANSWER_MS / 1000;
const RESTORE_ANSWER_S = RESTORE_ANSWER_MS / 1000;
/** Part of Debian's perl-base, which is Essential. */
const PERL = '/usr/bin/perl';

/** Marks a file as haul's hook, so that uninstall removes only what install wrote. */
const MARK = '# haul-criu-hook';

/**
 * criu-hook.pl, beside this file: what the hook becomes for a dump or a restore: perl (Debian's perl-base is Essential, and it
 * starts in a few milliseconds; Node takes 0.12 s here, and the restore's call is inside the
 * container's downtime). Arguments: the real CRIU, the agent's socket, the migration id file's name, the seconds it waits for a dump's and a restore's answer, then CRIU's. It sends the
 * request as one JSON line, reads the reply (plugin/hook-protocol.ts), and execs CRIU with the
 * agent's arguments, in this same process: liblxc looks for the restored init among its own
 * children. A `ps-socket` in the reply is connected here and handed to CRIU as --ps-socket, the one
 * descriptor left open across the exec. It exits 1 (saying why on stderr) when the agent says the
 * call must fail, and runs CRIU unchanged when no agent listens or answers in time, unless the
 * restore needs the pages haul moved.
 */
const ASK_AGENT_THEN_EXEC = packageFile('plugin/criu-hook.pl', import.meta.url);
/** Its name beside the installed hook. */
const HOOK_PERL = 'criu-hook.pl';

/**
 * The hook liblxc runs as `criu`: POSIX sh, then the perl above (liblxc needs the real CRIU to
 * replace it, so it ends in an exec). It prints nothing on stdout (liblxc parses `criu --version`
 * there), passes every call but the final dump and the restore straight to the real CRIU, and
 * becomes the perl for those two, which asks the haul agent and becomes CRIU. With no agent socket,
 * or no agent answering, the call runs unchanged and the move stays native; a restore whose pages
 * went through haul then fails, saying why (the perl decides both).
 */
export function hookScript(realCriu: string, perlProgram: string): string {
  return `#!/bin/sh
${MARK}: installed by \`haul agent install\`; remove with \`haul agent uninstall\`.
real_criu=${shellWord(realCriu)}
case "\${1:-}" in
  dump|restore) ;;
  *) exec "$real_criu" "$@" ;;
esac
socket="\${INCUS_DIR:-/var/lib/incus}/haul-agent.sock"
exec ${PERL} ${shellWord(perlProgram)} "$real_criu" "$socket" ${shellWord(MIGRATION_ID_FILE)} ${DUMP_ANSWER_S} ${RESTORE_ANSWER_S} "$@"
`;
}

/**
 * Writes the hook as `hookDir`/criu, running `realCriu` (a host path; `root`: where the host's / is,
 * for tests). The real CRIU must be an absolute path to an executable that is not the hook itself,
 * by any name (a hook that runs itself would hang every CRIU call incusd makes).
 */
export async function installHook(hookDir: string, realCriu: string, root = '/'): Promise<string> {
  const path = join(hookDir, 'criu');
  if (!isAbsolute(realCriu)) throw new Error(`the real CRIU must be an absolute path, not ${JSON.stringify(realCriu)} (a name would be looked up on incusd's PATH, where the hook comes first)`);
  const real = join(root, realCriu);
  if (!(await access(real, constants.X_OK).then(() => true, () => false))) throw new Error(`${realCriu} is not an executable CRIU`);
  const [realTarget, hookTarget] = await Promise.all([realpath(real), realpath(path).catch(() => undefined)]);
  if (realTarget === hookTarget || (await isHaulHook(real))) throw new Error(`${realCriu} is haul's hook itself: name the CRIU it should run`);
  const existing = await readFile(path, 'utf8').catch(() => undefined);
  if (existing !== undefined && !existing.includes(MARK)) throw new Error(`${path} exists and is not haul's hook; not replacing it`);
  await mkdir(hookDir, { recursive: true });
  // a copy of its own: the hook keeps working while the package is replaced under it
  await replaceFile(join(hookDir, HOOK_PERL), await readFile(ASK_AGENT_THEN_EXEC), 0o644);
  await replaceFile(path, hookScript(realCriu, join(hookDir, HOOK_PERL).slice(root === '/' ? 0 : root.length)), 0o755);
  return path;
}

/**
 * Puts `content` at `path` whole or not at all (a CRIU call that runs the hook meanwhile sees the
 * old one or the new one), never writing through a link planted at either name.
 */
async function replaceFile(path: string, content: string | Buffer, mode: number): Promise<void> {
  const fresh = `${path}.haul-new`;
  await rm(fresh, { force: true });
  await writeFile(fresh, content, { flag: 'wx', mode });
  await chmod(fresh, mode);
  await rename(fresh, path);
}

/**
 * Where operators' packages put the real CRIU, in the order incusd would find them: Zabbly's
 * beside its Incus (its incusd wrapper puts /opt/incus/bin first on the PATH; once haul agent
 * install diverted it, under its diverted name), Debian's, a build from source.
 */
export const KNOWN_CRIU_LOCATIONS = ['/opt/incus/bin/criu.haul-real', '/opt/incus/bin/criu', '/usr/sbin/criu', '/usr/local/sbin/criu'] as const;

/** The first of `candidates` that is an executable and not haul's hook: the CRIU to run when none is named. */
export async function findRealCriu(candidates: readonly string[] = KNOWN_CRIU_LOCATIONS): Promise<string | undefined> {
  for (const candidate of candidates) {
    if (!(await access(candidate, constants.X_OK).then(() => true, () => false))) continue;
    if (!(await isHaulHook(candidate))) return candidate;
  }
  return undefined;
}

/** Whether the file is haul's hook: its first few KiB hold the hook's mark (the hook is a short script; CRIU is not). */
export async function isHaulHook(path: string): Promise<boolean> {
  const file = await open(path).catch(() => undefined);
  if (!file) return false;
  try {
    const { buffer, bytesRead } = await file.read({ buffer: Buffer.alloc(4096) });
    return buffer.subarray(0, bytesRead).toString('latin1').includes(MARK);
  } finally {
    await file.close();
  }
}

export async function uninstallHook(hookDir: string): Promise<boolean> {
  const path = join(hookDir, 'criu');
  const existing = await readFile(path, 'utf8').catch(() => undefined);
  if (existing === undefined) return false;
  if (!existing.includes(MARK)) throw new Error(`${path} is not haul's hook; not removing it`);
  await rm(path);
  await rm(join(hookDir, HOOK_PERL), { force: true });
  return true;
}
