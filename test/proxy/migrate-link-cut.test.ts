import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect, it } from 'vitest';
import { ImageCache, type CacheEvent } from '../../proxy/image-cache.js';
import { migrateLazy, migratePreCopy } from '../../proxy/image-proxy.js';
import { cuttingProxy } from '../support/cutting-proxy.js';
import { describeOnHost } from '../support/host.js';
import { hostApp } from '../support/link-hosts.js';
import { useMigrationScenes, type MigrationScene } from '../support/migration-scene.js';
import { CRIU_ON_SECOND_HOST, holdRestoredProcesses } from '../support/second-host.js';
import { realtimeNs } from '../support/workload.js';

/**
 * Shorter than the default 30 s, so that an outage longer than it fits in a test; long enough that
 * a busy machine's stalls do not use it up before the test has seen the restored copy held.
 */
const RESUME_WINDOW_MS = 3000;

/** Processes running the scene's workload (its command line names the scene's own directory). */
function copiesOf(scene: MigrationScene): number[] {
  const copies: number[] = [];
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (cmdline.includes('haul-workload') && cmdline.includes(scene.workload.dir)) copies.push(Number(pid));
  }
  return copies;
}

/**
 * A destination reached through a proxy that can be taken down for good (every connection cut, new
 * ones refused), as a network outage longer than the link's resume window would. `onEvent` may
 * call the outage as the cache reports.
 */
async function destinationBehindOutage(scene: MigrationScene, criuBinary: string, onEvent: (event: CacheEvent, outage: () => void) => void = () => {}) {
  holdRestoredProcesses(scene.destination, scene.defer);
  const events: CacheEvent[] = [];
  let outage = (): void => {};
  const cache = await ImageCache.start({
    address: '127.0.0.1', port: 0, dir: `${scene.destination}/cache`, insecure: true, application: hostApp('destination'), criuBinary, resumeWindowMs: RESUME_WINDOW_MS,
    onEvent: (event) => {
      events.push(event);
      onEvent(event, outage);
    },
  });
  scene.defer(() => void cache.close());
  const proxy = await cuttingProxy(cache.port);
  outage = () => void proxy.close();
  scene.defer(() => void proxy.close());
  return { events, to: `ws://127.0.0.1:${proxy.port}`, outage };
}

/** The state letter of /proc/PID/stat (R, S, T for stopped...), or '' once the process is gone. */
function processState(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').charAt(0);
  } catch {
    return '';
  }
}

async function eventually<T>(what: () => T, accept: (value: T) => boolean, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  let value = what();
  while (!accept(value) && Date.now() < deadline) {
    await sleep(10);
    value = what();
  }
  return value;
}

describeOnHost('a link cut for longer than the resume window, before the destination confirms', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();
  const link = { insecure: true, application: hostApp('source'), resumeWindowMs: RESUME_WINDOW_MS } as const;

  it('pre-copy, while pages move: the source resumes intact and the destination restores nothing', async () => {
    const scene = await scenes.start('cut-transfer', 128);
    const { events, to } = await destinationBehindOutage(scene, CRIU_ON_SECOND_HOST, (event, outage) => void (event.kind === 'migration' && setTimeout(outage, 50)));
    const frozenAt = realtimeNs();
    await expect(migratePreCopy({ ...link, pid: scene.workload.pid, to })).rejects.toThrow(/pre-copy migration of \d+ failed, the source process keeps running/);
    await scene.expectContinued(frozenAt);
    expect(await eventually(() => events.map((e) => e.kind), (kinds) => kinds.length >= 2)).toEqual(['migration', 'failed']);
    expect(copiesOf(scene)).toEqual([scene.workload.pid]);
  }, 120_000);

  it('pre-copy, while the destination restores: the restored copy is ended and the source resumes intact', async () => {
    const scene = await scenes.start('cut-restore', 32);
    // a criu that says when the restore begins and takes a moment, so the outage falls inside it
    const began = `${scene.destination}/restore-began`;
    const slowCriu = `${scene.destination}/slow-criu.sh`;
    writeFileSync(slowCriu, `#!/bin/sh\n[ "$1" = restore ] && touch ${began} && sleep 0.5\nexec ${CRIU_ON_SECOND_HOST} "$@"\n`, { mode: 0o755 });
    const { events, to, outage } = await destinationBehindOutage(scene, slowCriu);
    const frozenAt = realtimeNs();
    const migration = migratePreCopy({ ...link, pid: scene.workload.pid, to });
    migration.catch(() => {});
    expect(await eventually(() => existsSync(began), Boolean, 60_000)).toBe(true);
    outage();
    await expect(migration).rejects.toThrow(/pre-copy migration of \d+ failed, the source process keeps running/);
    await scene.expectContinued(frozenAt);
    const failed = await eventually(() => events.find((e) => e.kind === 'failed'), Boolean);
    // the link is given up on either while CRIU still restores or just after (a loaded machine)
    expect(failed).toMatchObject({ error: expect.stringMatching(/before the restore could be reported|failed during the restore/) });
    expect(events.map((e) => e.kind)).not.toContain('restored');
    // CRIU did restore it (held stopped), and the cache ended it
    expect(existsSync(`${scene.destination}/cache`) && readdirSync(`${scene.destination}/cache`).some((id) => existsSync(`${scene.destination}/cache/${id}/restored.pid`))).toBe(true);
    expect(await eventually(() => copiesOf(scene), (pids) => pids.length === 1)).toEqual([scene.workload.pid]);
  }, 120_000);

  it('lazy, after the restore while pages still move: the restored copy is ended and the source resumes intact', async () => {
    const scene = await scenes.start('cut-lazy', 128);
    let restoredPid = 0;
    const { events, to } = await destinationBehindOutage(scene, CRIU_ON_SECOND_HOST, (event, outage) => {
      if (event.kind !== 'restored') return;
      restoredPid = event.pid;
      outage();
    });
    const frozenAt = realtimeNs();
    const migration = migrateLazy({ ...link, pid: scene.workload.pid, to });
    migration.catch(() => {});
    // while the link is down, before either side gives up on it, the restored copy is held stopped
    expect(await eventually(() => restoredPid, Boolean, 60_000)).toBeGreaterThan(0);
    expect(await eventually(() => processState(restoredPid), (state) => state === 'T', RESUME_WINDOW_MS)).toBe('T');
    await expect(migration).rejects.toThrow(/lazy migration of \d+ failed, the source process keeps running/);
    await scene.expectContinued(frozenAt);
    // it ran (lazily) on the destination, and then failed there with the link
    expect(await eventually(() => events.map((e) => e.kind), (kinds) => kinds.length >= 3)).toEqual(['migration', 'restored', 'failed']);
    expect(await eventually(() => copiesOf(scene), (pids) => pids.length === 1)).toEqual([scene.workload.pid]);
  }, 120_000);
});
