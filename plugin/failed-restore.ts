import { setTimeout as sleep } from 'node:timers/promises';
import { repairFailedArrival } from './arrival-repair.js';
import type { DestinationContext, Incoming } from './destination-context.js';
import { cutConnections } from './incus-connections.js';

/** After a failed restore: how long incusd here gets to see its cut connections fail. */
const CUT_SETTLE_MS = 500;

/**
 * A failed restore, with incusd here held at CRIU's log: Incus' migration must fail before incusd
 * goes on, or it may report the failure as a success (RestoreLogGate) and `incus move` delete the
 * source. Its migration fails when its connections to the source's incusd do: both ends see the
 * migration fail (Incus' source resumes the container), and the move reports the error.
 * Cancelling the source's operation instead would not do: the client takes a cancelled source
 * operation for a finished one, and deletes the source. Every migration between these two
 * incusd is cut: any other one under way fails too, as a native move's would.
 */
export async function cutIncusMigration(context: DestinationContext, entry: Incoming): Promise<void> {
  try {
    if (entry.sourceManagerAddresses.length === 0) throw new Error('the source named no IP address of its own where its incusd listens');
    const { pid } = await context.incus.server();
    const cut = await cutConnections(pid, entry.sourceManagerAddresses);
    if (cut.length === 0) throw new Error(`incusd here holds no connection to the source's incusd at ${entry.sourceManagerAddresses.join(', ')}`);
    context.log(`${entry.instance}: the restore failed; ${cut.length} connections of incusd here to the source's incusd (${entry.sourceManagerAddresses.join(', ')}) cut, so that Incus fails the move rather than report it as a success`, 'warning');
    await sleep(CUT_SETTLE_MS);
  } catch (error) {
    context.log(`${entry.instance}: the restore failed, and Incus' migration could not be cut short (${error instanceof Error ? error.message : String(error)}); Incus may report the failed restore as a success`, 'error');
  }
}

/** Once Incus is done failing the move, undoes what it left behind here (see repairFailedArrival). */
export function afterFailedArrival(context: DestinationContext, instance: string): void {
  void repairFailedArrival(context.incus, instance).then(
    (what) => context.log(`${instance}: after the failed move: ${what}`),
    (error: Error) => context.log(`${instance}: after the failed move, could not repair what Incus left: ${error.message}`, 'error'),
  );
}
