/**
 * How long this agent lets a restore run for a peer that asks for `requestedMs` (the instance's
 * user.haul.restore-timeout as the source read it; 0: no wish). The local `--restore-timeout` is
 * the most a peer gets: a source cannot make this host hold incusd at a restore for longer than
 * its own operator allows.
 */
export function restoreTimeoutFor(requestedMs: number, localMaxMs: number): number {
  if (!Number.isFinite(requestedMs) || requestedMs <= 0) return localMaxMs;
  return Math.min(requestedMs, localMaxMs);
}
