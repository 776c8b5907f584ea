import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import type { OwnerIds } from '../proxy/index.js';

/** Far above any liblxc config incusd writes; a bigger file is not one. */
const MAX_CONFIG_BYTES = 1024 * 1024;
/** `lxc.idmap = u|g NSID HOSTID RANGE` (liblxc's confile.c set_config_idmaps). */
const IDMAP_LINE = /^\s*lxc\.idmap\s*=\s*([ug])\s+(\d{1,10})\s+(\d{1,10})\s+(\d{1,10})\s*$/;

/**
 * The host ids the container a restore brings back may own files by: the id map in the liblxc
 * config incusd wrote for that restore (`forkmigrate NAME LXCPATH CONFIG`, restore-caller.ts), the
 * map the restored container runs with. Undefined where the config maps no ids: a privileged
 * container, whose root is the host's.
 *
 * Read there, not from incusd's API: while a restore runs, incusd answers for its instance only
 * after liblxc's 5 s "monitor is unresponsive" timeout (driver_lxc.go getLxcState), which the move
 * would pay frozen. The file is incusd's: it must be a regular file owned by root and writable by
 * root alone, and no link is followed to it; anything else is refused, never bounded by nothing.
 */
export async function ownerIdsOfRestore(lxcConfigPath: string): Promise<OwnerIds | undefined> {
  if (!lxcConfigPath.startsWith('/')) throw new Error(`the restore's liblxc config is not an absolute path: ${JSON.stringify(lxcConfigPath)}`);
  const file = await open(lxcConfigPath, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  let text: string;
  try {
    const info = await file.stat();
    if (!info.isFile() || info.uid !== 0 || (info.mode & 0o022) !== 0 || info.size > MAX_CONFIG_BYTES) {
      throw new Error(`the restore's liblxc config ${lxcConfigPath} is not a file only root writes (${info.isFile() ? `owner ${info.uid}, mode ${(info.mode & 0o777).toString(8)}, ${info.size} bytes` : 'not a regular file'})`);
    }
    text = (await file.readFile()).toString('utf8');
  } finally {
    await file.close();
  }
  const uids: Array<{ first: number; count: number }> = [];
  const gids: Array<{ first: number; count: number }> = [];
  for (const line of text.split('\n')) {
    if (!/^\s*lxc\.idmap\s*=/.test(line)) continue;
    const match = IDMAP_LINE.exec(line);
    if (!match) throw new Error(`the restore's liblxc config ${lxcConfigPath} has an id map line haul cannot read: ${JSON.stringify(line.slice(0, 120))}`);
    const [first, count] = [Number(match[3]), Number(match[4])];
    if (count === 0 || first + count > 2 ** 32) throw new Error(`the restore's liblxc config ${lxcConfigPath} maps ids past 32 bits or none: ${JSON.stringify(line)}`);
    (match[1] === 'u' ? uids : gids).push({ first, count });
  }
  if (uids.length === 0 && gids.length === 0) return undefined;
  // a map of one kind alone is not a container liblxc starts: do not take it as privileged
  if (uids.length === 0 || gids.length === 0) throw new Error(`the restore's liblxc config ${lxcConfigPath} maps ${uids.length ? 'uids' : 'gids'} only`);
  return { uids, gids };
}
