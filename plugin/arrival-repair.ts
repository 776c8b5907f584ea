import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { IncusClient } from './incus-client.js';

/** How long Incus may take over its own failure handling (its stop hooks wait 2 x 30 s). */
const INCUS_SETTLES_MS = 5 * 60_000;
/** After the create operation ends, Incus' two stop hooks race for the instance's lock. */
const HOOKS_RACE_MS = 3_000;

/**
 * Cleans up after an incoming migration whose restore failed, once Incus is done with it, and
 * returns what it did. Incus 6.0.4 leaves a "stop" operation lock on the instance's name that
 * nothing releases (its onStopNS hook takes it and leaves it to the onStop hook, which loses the
 * race for it; the lock has no timeout): every later move of that instance here fails with
 * 'Instance is busy running a "stop" operation' until incusd restarts
 * (docs/incus-native-move.md). The lock is released the way Incus itself would end it:
 * an instance of that name runs the onStop hook (GET /internal/containers/NAME/onstop), whose
 * handler adopts the stale lock and ends it. A placeholder, created empty under another name and
 * renamed (renaming takes no lock), gives the name an instance for that, and is deleted after.
 *
 * An instance of that name that Incus kept here is never touched: when Incus 6.0.4 reports a
 * failed restore to the source as a success, `incus move` deletes the source, and the stopped copy
 * here (its disk as of the freeze) is all that is left of the container.
 */
export async function repairFailedArrival(incus: IncusClient, instance: string): Promise<string> {
  const deadline = Date.now() + INCUS_SETTLES_MS;
  while (await incus.isCreating(instance)) {
    if (Date.now() > deadline) return `left as is: Incus was still creating ${instance} after ${INCUS_SETTLES_MS / 60_000} min`;
    await sleep(1000);
  }
  await sleep(HOOKS_RACE_MS);

  const kept = await incus.instance(instance);
  if (kept) {
    return `Incus kept ${instance} here (${kept.status}) although its restore failed (Incus 6.0.4 can report such a failure as a success, and incus move then deletes the source): if the source still has it, delete this copy; if not, this copy holds its disk as of the freeze (incus start boots it afresh)`;
  }
  const placeholder = `haul-repair-${randomBytes(4).toString('hex')}`;
  await incus.change('POST', '/1.0/instances', { name: placeholder, type: 'container', source: { type: 'none' } });
  try {
    await incus.change('POST', instancePath(placeholder), { name: instance });
  } catch (error) {
    await incus.change('DELETE', instancePath(placeholder)).catch(() => {});
    throw error; // someone took the name meanwhile: theirs now
  }
  await incus.get(`/internal/containers/${encodeURIComponent(instance)}/onstop?target=stop`);
  await sleep(500); // the handler ends the lock from a goroutine of its own
  await incus.change('DELETE', instancePath(instance));
  return `released any "stop" lock Incus leaked on ${instance}`;
}

function instancePath(name: string): string {
  return `/1.0/instances/${encodeURIComponent(name)}`;
}
