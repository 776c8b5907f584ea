import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeOnHost } from '../support/host.js';
import { buildPackage, downHost, incusHostWithHaul, journalOf, on, onAsync, pairHosts } from '../support/realhost.js';
import { counterReport, expectMovesThroughHaul } from '../support/realhost-moves.js';
import { scratchDir } from '../support/scratch.js';

/** Two Debian 12 hosts booted by systemd, on a LAN of their own, each with Debian's Incus and haul's package. */
const SOURCE = 'haul-real-c';
const TARGET = 'haul-real-d';
const ADDRESS: Record<string, string> = { [SOURCE]: '10.231.0.13', [TARGET]: '10.231.0.14' };

describeOnHost('incus move between two real hosts through haul (scripts/realhost)', ['root'], () => {
  const scratch = scratchDir('realhost-move');

  beforeAll(async () => {
    const deb = await buildPackage(join(scratch.path, 'out'));
    for (const host of [SOURCE, TARGET]) await incusHostWithHaul(host, ADDRESS[host]!, 'bookworm', deb);
    await pairHosts([[SOURCE, TARGET]], ADDRESS);
  }, 600_000);
  afterAll(async () => {
    for (const host of [SOURCE, TARGET]) await downHost(host);
    scratch.remove();
  });

  it.each(['pre-copy', 'lazy'] as const)('moves a running container %s: the same processes, their memory intact, and haul says so on both hosts', async (mode) => {
    await expectMovesThroughHaul(SOURCE, TARGET, `c-${mode}`, mode);
  }, 180_000);

  it("passes a stateful stop and start through the hook and the agent to CRIU, liblxc's cgroup root mended, and the container comes back as it was", async () => {
    const name = 'c-stateful';
    await onAsync(SOURCE, ['incus', 'launch', 'busybox', name, '--quiet']);
    const before = await counterReport(SOURCE, name);
    const logged = journalOf(SOURCE, 'haul-agent').length;
    await onAsync(SOURCE, ['incus', 'stop', '--stateful', name]);
    expect(on(SOURCE, 'incus', 'list', name, '-f', 'csv', '-c', 's').trim()).toBe('STOPPED');
    await onAsync(SOURCE, ['incus', 'start', name]);
    const after = await counterReport(SOURCE, name);
    expect(after.pid).toBe(before.pid);
    expect(after.checksum).toBe(before.checksum);
    const said = journalOf(SOURCE, 'haul-agent').slice(logged);
    // liblxc 5.0 on a host with cgroup2 alone names the cgroup relative (plugin/liblxc-arguments.ts)
    expect(said).toContain(`criu dump: liblxc's arguments mended: --cgroup-root lxc.payload.${name} → /lxc.payload.${name}`);
    expect(said).toContain(`criu restore: liblxc's arguments mended: --cgroup-root lxc.payload.${name} → /lxc.payload.${name}`);
    expect(said).toMatch(/criu dump of pid \d+ is not the final dump of a live move \(a stateful stop or snapshot\): run unchanged/);
    expect(said).toMatch(/criu restore from \S+: nothing of haul's in it \(a stateful start or a native move\), run unchanged/);
  }, 120_000);
});
