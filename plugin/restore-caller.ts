import { readFile, stat } from 'node:fs/promises';
import { statFields } from '../src/host/index.js';

/** Who started a `criu restore` that came through the hook, as incusd's forkmigrate says. */
export interface RestoreCaller {
  /** The instance, project-prefixed outside the default project. */
  readonly instance: string;
  /** The liblxc config incusd wrote for this restore (restore-idmap.ts reads its id map). */
  readonly lxcConfigPath: string | undefined;
}

/**
 * The instance a `criu restore` that came through the hook restores, as the processes that started
 * it say, or undefined if they are not Incus' own. liblxc runs CRIU from a fork of Incus'
 * `incusd forkmigrate NAME LXCPATH CONFIG ...` (cmd/incusd/main_forkmigrate.go; NAME is the
 * project-prefixed name, the plain one in the default project), so CRIU's parent is a process of
 * incusd's binary whose second argument is the name (seen on Incus 6.0.4: CRIU's parent is
 * forkmigrate's do_restore fork, argv intact). What a peer says it moves is checked against this,
 * never the other way round.
 */
export async function restoreCaller(criuPid: number, incusdPid: number): Promise<RestoreCaller | undefined> {
  const parent = Number(statFields(criuPid)?.[1]);
  if (!Number.isInteger(parent) || parent <= 1) return undefined;
  const [argv, parentBinary, incusdBinary] = await Promise.all([
    readFile(`/proc/${parent}/cmdline`).then((bytes) => bytes.toString('utf8').split('\0'), () => undefined),
    stat(`/proc/${parent}/exe`).catch(() => undefined),
    stat(`/proc/${incusdPid}/exe`).catch(() => undefined),
  ]);
  if (!argv || !parentBinary || !incusdBinary) return undefined;
  if (parentBinary.dev !== incusdBinary.dev || parentBinary.ino !== incusdBinary.ino) return undefined;
  if (argv[1] !== 'forkmigrate' || !argv[2]) return undefined;
  return { instance: argv[2], lxcConfigPath: argv[4] || undefined };
}
