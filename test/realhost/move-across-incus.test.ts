import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeOnHost } from '../support/host.js';
import { buildPackage, doctorOn, downHost, incusHostWithHaul, journalOf, movesRecorded, on, onAsync, pairHosts, type Release } from '../support/realhost.js';
import { scratchDir } from '../support/scratch.js';
import { realtimeNs } from '../support/workload.js';
import { counterReport, expectMovesThroughHaul } from '../support/realhost-moves.js';

/**
 * Three hosts booted by systemd on a LAN of their own: one on Debian 12 (Incus 6.0.4, liblxc 5.0,
 * the test bed's CRIU 4.1.1), two on Debian sid (Incus 7.0, liblxc 7.0, sid's CRIU 4.2.1), each with
 * haul's package: what a fleet looks like half-way through its upgrade.
 */
const INCUS_6 = 'haul-real-6';
const INCUS_7 = 'haul-real-7a';
const INCUS_7_OTHER = 'haul-real-7b';
const RELEASE: Record<string, Release> = { [INCUS_6]: 'bookworm', [INCUS_7]: 'sid', [INCUS_7_OTHER]: 'sid' };
const ADDRESS: Record<string, string> = { [INCUS_6]: '10.231.0.16', [INCUS_7]: '10.231.0.17', [INCUS_7_OTHER]: '10.231.0.18' };
const HOSTS = Object.keys(RELEASE);
/** Kept up after the run for a look inside (scripts/realhost run NAME …; scripts/realhost down NAME). */
const KEEP_HOSTS = process.env['HAUL_TEST_KEEP_HOSTS'] === '1';

describeOnHost('incus move through haul between Incus 6.0 and 7.0 hosts (scripts/realhost)', ['root'], () => {
  const scratch = scratchDir('realhost-across');

  beforeAll(async () => {
    const deb = await buildPackage(join(scratch.path, 'out'));
    for (const host of HOSTS) await incusHostWithHaul(host, ADDRESS[host]!, RELEASE[host]!, deb);
    await pairHosts([[INCUS_7, INCUS_7_OTHER], [INCUS_6, INCUS_7], [INCUS_7, INCUS_6]], ADDRESS);
  }, 900_000);
  afterAll(async () => {
    if (!KEEP_HOSTS) for (const host of HOSTS) await downHost(host);
    scratch.remove();
  });

  it.each(['pre-copy', 'lazy'] as const)('moves a running container %s between two Incus 7.0 hosts on CRIU 4.2.1', async (mode) => {
    await expectMovesThroughHaul(INCUS_7, INCUS_7_OTHER, `c7-${mode}`, mode);
    // liblxc 7's arguments, as plugin/liblxc-arguments.ts mends them
    const said = journalOf(INCUS_7_OTHER, 'haul-agent');
    expect(said).toContain(`criu restore: liblxc's arguments mended: --cgroup-root lxc.payload.c7-${mode} → /lxc.payload.c7-${mode}; --mntns-compat-mode added (the credentials mount)`);
  }, 180_000);

  it.each(['pre-copy', 'lazy'] as const)('moves a running container %s from Incus 6.0.4 on CRIU 4.1.1 to Incus 7.0 on CRIU 4.2.1', async (mode) => {
    await expectMovesThroughHaul(INCUS_6, INCUS_7, `c6-${mode}`, mode);
  }, 180_000);

  it.each(['pre-copy', 'lazy'] as const)('refuses %s from Incus 7.0 to Incus 6.0.4 before the container is frozen, saying why; it runs on where it was', async (mode) => {
    const name = `c76-${mode}`;
    await onAsync(INCUS_7, ['incus', 'launch', 'busybox', name, '--quiet', '--config', `user.haul.mode=${mode}`]);
    const before = await counterReport(INCUS_7, name);
    await expect(onAsync(INCUS_7, ['incus', 'move', name, `${INCUS_6}:`, '--quiet'])).rejects.toThrow(/Failed migration on source/);

    const since = realtimeNs();
    const after = await counterReport(INCUS_7, name, since);
    expect(after.pid).toBe(before.pid);
    expect(after.checksum).toBe(before.checksum);
    expect(after.tick).toBeGreaterThan(before.tick);
    expect(on(INCUS_6, 'incus', 'list', '-f', 'csv', '-c', 'n')).not.toMatch(new RegExp(`^${name}$`, 'm'));
    const why = /Incus 7\.\d+\.\d+ has Incus' credentials mount \(\/dev\/\.incus-systemd-credentials, Incus 6\.18 and later\), which Incus 6\.0\.4 cannot give back/;
    expect(movesRecorded(INCUS_7, name)).toEqual([expect.objectContaining({ role: 'source', mode, result: 'failed', peer: INCUS_6, error: expect.stringMatching(why) })]);
    // haul doctor says so before anyone tries
    const doctor = doctorOn(INCUS_7);
    expect(doctor.find((line) => line.check === `moves to ${INCUS_6}`)).toEqual(expect.objectContaining({ ok: false, found: expect.stringMatching(why) }));
    expect(doctor.find((line) => line.check === `moves from ${INCUS_6}`)).toEqual(expect.objectContaining({ ok: true }));
  }, 180_000);
});
