import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DISK_CHANGES_FILE, applyDiskChanges } from '../proxy/index.js';
import type { DestinationContext, Incoming } from './destination-context.js';
import { argumentOf } from './hook-protocol.js';
import { restoreCaller } from './restore-caller.js';
import { ownerIdsOfRestore } from './restore-idmap.js';

/**
 * Where the source sent its root filesystem's changes since Incus' snapshot (btrfs and zfs
 * pools; source-disk.ts), writes them into the root the restore is about to use, as liblxc
 * mounted it for the restore (seen through the hook's own mount namespace).
 */
export async function bringDiskUpToDate(context: DestinationContext, entry: Incoming, args: readonly string[], callerPid: number | undefined): Promise<void> {
  const changes = join(entry.dir, DISK_CHANGES_FILE);
  if (!(await stat(changes).catch(() => undefined))) return;
  const root = argumentOf(args, '--root');
  if (!root || !callerPid) throw new Error('the restore names no root filesystem to write the disk changes into');
  // the peer named the instance; the owners allowed come from the restore incusd really runs
  const caller = await restoreCaller(callerPid, (await context.incus.server()).pid);
  if (caller?.instance !== entry.instance) throw new Error(`the restore is of ${caller === undefined ? 'no instance incusd started (its CRIU is not a child of incusd forkmigrate)' : `instance ${caller.instance}`}, and the disk changes are for ${entry.instance}`);
  if (!caller.lxcConfigPath) throw new Error(`incusd's forkmigrate names no liblxc config for the restore of ${entry.instance}: the ids its files may have are not known`);
  // the container wrote these files: they may be owned only by ids its own root could give them
  const owners = await ownerIdsOfRestore(caller.lxcConfigPath);
  const applied = await applyDiskChanges(createReadStream(changes), `/proc/${callerPid}/root${root}`, owners ? { owners } : {});
  context.log(`${entry.instance}: disk brought up to the frozen source: ${applied.files} files (${applied.bytes} bytes), ${applied.symlinks} symlinks, ${applied.directories} directories, ${applied.removed} removed`);
}
