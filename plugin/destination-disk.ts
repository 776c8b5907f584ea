import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DISK_CHANGES_FILE, applyDiskChanges } from '../proxy/index.js';
import type { DestinationContext, Incoming } from './destination-context.js';
import { argumentOf } from './hook-protocol.js';
import { ownerIdsOf } from './instance-idmap.js';
import { instanceRestoredBy } from './restore-caller.js';

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
  // the peer named the instance; the owners allowed come from the one this restore really is
  const restoring = await instanceRestoredBy(callerPid, (await context.incus.server()).pid);
  if (restoring !== entry.instance) throw new Error(`the restore is of ${restoring === undefined ? 'no instance incusd started (its CRIU is not a child of incusd forkmigrate)' : `instance ${restoring}`}, and the disk changes are for ${entry.instance}`);
  const instance = await context.incus.instance(entry.instance);
  if (!instance) throw new Error(`incusd here knows no instance ${entry.instance} to write the disk changes for`);
  // the container wrote these files: they may be owned only by ids its own root could give them
  const owners = ownerIdsOf(instance);
  const applied = await applyDiskChanges(createReadStream(changes), `/proc/${callerPid}/root${root}`, owners ? { owners } : {});
  context.log(`${entry.instance}: disk brought up to the frozen source: ${applied.files} files (${applied.bytes} bytes), ${applied.symlinks} symlinks, ${applied.directories} directories, ${applied.removed} removed`);
}
