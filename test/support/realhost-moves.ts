import { expect } from 'vitest';
import { movesRecorded, on, onAsync } from './realhost.js';
import { parseReport, realtimeNs, reportArgs, type WorkloadReport } from './workload.js';

/** What the busybox counter in container `name` on `host` reports (beats since `since` included). */
export async function counterReport(host: string, name: string, since?: bigint): Promise<WorkloadReport> {
  return parseReport(await onAsync(host, ['incus', 'exec', name, '--', 'haul-workload', ...reportArgs('/run/haul', since)]));
}

/**
 * Launches a counter as `name` on `source`, moves it to `target` with `incus move` in `mode`, and
 * checks that it arrived as it was: the same process and memory, still counting, gone from the
 * source, and haul's records on both hosts saying it went through haul.
 */
export async function expectMovesThroughHaul(source: string, target: string, name: string, mode: 'pre-copy' | 'lazy'): Promise<void> {
  await onAsync(source, ['incus', 'launch', 'busybox', name, '--quiet', '--config', `user.haul.mode=${mode}`]);
  const before = await counterReport(source, name);
  const since = realtimeNs();
  await onAsync(source, ['incus', 'move', name, `${target}:`, '--quiet']);

  const after = await counterReport(target, name, since);
  expect(after.pid).toBe(before.pid);
  expect(after.checksum).toBe(before.checksum);
  expect(after.tick).toBeGreaterThan(before.tick);
  expect(on(source, 'incus', 'list', '-f', 'csv', '-c', 'n')).not.toMatch(new RegExp(`^${name}$`, 'm'));
  for (const [host, role, result, peer] of [[source, 'source', 'moved', target], [target, 'destination', 'restored', source]] as const) {
    expect(movesRecorded(host, name)).toEqual([expect.objectContaining({ role, mode, result, peer })]);
  }
}
