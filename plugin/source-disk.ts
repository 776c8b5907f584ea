import { packDiskChanges } from '../proxy/index.js';
import { mountPointsOf } from '../src/host/index.js';
import type { IncusInstance } from './incus-client.js';
import type { DiskCatchUp, Outgoing, SourceContext } from './source-context.js';


/**
 * Pools whose migration sends the root filesystem once, from a snapshot taken before the dump,
 * with no sync after the freeze (Incus 6.0.4 sets MultiSync only for rsync-based transfers).
 */
const SNAPSHOT_ONCE_DRIVERS = new Set(['btrfs', 'zfs']);
/** Margin before the migration operation's start, for the kernel's coarse ctime clock: more is sent, never less. */
const SNAPSHOT_MARGIN_MS = 250;

/**
 * Whether this move needs haul to carry the disk changes made after Incus' snapshot, and from
 * when: the instance's root pool sends its volume once before the dump (btrfs, zfs); the
 * snapshot comes after the move's "Migrating instance" operation began.
 */
export async function diskCatchUp(context: SourceContext, instance: IncusInstance, initPid: number, hookCalledAt: Date): Promise<DiskCatchUp | undefined> {
  const pool = instance.expanded_devices?.['root']?.['pool'];
  if (!pool || !SNAPSHOT_ONCE_DRIVERS.has(await context.incus.poolDriver(pool))) return undefined;
  const migrating = (await context.incus.operationsOn(instance.name, 'Migrating instance'))
    .map((op) => Date.parse(op.created_at))
    .filter((at) => Number.isFinite(at));
  // none found (an older Incus, another client): a wide window sends more, never less
  const began = migrating.length ? Math.max(...migrating) : hookCalledAt.getTime() - 60_000;
  const sinceMs = began - SNAPSHOT_MARGIN_MS;
  context.log(`${instance.name}: pool ${pool} sends its disk once before the dump; haul carries what changed since ${new Date(sinceMs).toISOString()}${migrating.length ? '' : " (no 'Migrating instance' operation found: a minute back)"}`);
  return { initPid, root: `/proc/${initPid}/root`, sinceMs };
}

/**
 * Both modes, once CRIU has handed over what haul sends (the container still frozen): the disk
 * changes where the pool needs them; resolves how many tars went (the engine counts them in the
 * image set it announces, then waits for the destination to store it all).
 */
export async function sendDiskChanges(context: SourceContext, { migration, progress, disk, record }: Outgoing, pages: number): Promise<number> {
  if (disk) {
    // the memory is dumped and the container still frozen: its disk holds still
    context.inFlight.update(progress, { pages, phase: 'sending the disk changes since the snapshot' });
    // its mounts hold still too: none is looked into, or at (a hung network share would hang the walk)
    const packed = packDiskChanges(disk.root, disk.sinceMs, { mountPoints: await mountPointsOf(disk.initPid) });
    await migration.sendDiskChanges(packed.tar);
    const carried = await packed.done;
    const skipped = carried.skipped.length ? `; not carried (device nodes, fifos, sockets): ${carried.skipped.slice(0, 10).join(', ')}` : '';
    context.log(`${record.instance}: disk changes since the snapshot sent: ${carried.files} files (${carried.bytes} bytes), ${carried.symlinks} symlinks, ${carried.directories} directories${skipped}`);
  }
  context.inFlight.update(progress, { pages, phase: 'waiting for the destination to store the pages and restore' });
  return disk ? 1 : 0;
}
