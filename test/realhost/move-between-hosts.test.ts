import { copyFileSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeOnHost } from '../support/host.js';
import { REPO } from '../support/paths.js';
import { buildPackage, downHost, freshHost, journalOf, on, onAsync, rootOf } from '../support/realhost.js';
import { scratchDir } from '../support/scratch.js';
import { parseReport, realtimeNs, reportArgs } from '../support/workload.js';

/** Two Debian 12 hosts booted by systemd, on a LAN of their own, each with Debian's Incus and haul's package. */
const SOURCE = 'haul-real-c';
const TARGET = 'haul-real-d';
const ADDRESS: Record<string, string> = { [SOURCE]: '10.231.0.13', [TARGET]: '10.231.0.14' };
const AGENT_PORT = 7444;

/**
 * Incus set up as the test bed's (README, "The test bed"): a dir pool, no network device, live
 * moves allowed, and liblxc's console and AppArmor settings this kernel cannot restore.
 */
const PRESEED = (address: string): string => `config:
  core.https_address: ${address}:8443
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  config:
    migration.stateful: "true"
    raw.lxc: |-
      lxc.console.path = none
      lxc.apparmor.profile =
  devices:
    root:
      path: /
      pool: default
      type: disk
`;

interface StatusRecord {
  readonly instance: string;
  readonly role: string;
  readonly mode: string;
  readonly result: string;
  readonly peer: string;
}

describeOnHost('incus move between two real hosts through haul (scripts/realhost)', ['root'], () => {
  const scratch = scratchDir('realhost-move');

  beforeAll(async () => {
    for (const host of [SOURCE, TARGET]) await freshHost(host, ADDRESS[host]);
    const deb = await buildPackage(join(scratch.path, 'out'));
    const busybox = readdirSync('/var/cache/haul/images').find((name) => /^busybox-.*\.tar\.gz$/.test(name));
    if (!busybox) throw new Error('no busybox image in /var/cache/haul/images: run scripts/setup-host first');
    for (const host of [SOURCE, TARGET]) {
      const root = rootOf(host);
      copyFileSync(deb, `${root}/var/tmp/haul.deb`);
      copyFileSync(join('/var/cache/haul/images', busybox), `${root}/var/tmp/busybox.tar.gz`);
      // the test bed's CRIU build, behind the wrapper these hosts need on this machine (scripts/lib/realhost-criu)
      mkdirSync(`${root}/usr/local/lib/haul-testbed`, { recursive: true });
      copyFileSync('/usr/local/sbin/criu', `${root}/usr/local/lib/haul-testbed/criu`);
      copyFileSync(join(REPO, 'scripts/lib/realhost-criu'), `${root}/usr/local/sbin/criu`);
      on(host, 'chmod', '755', '/usr/local/lib/haul-testbed/criu', '/usr/local/sbin/criu');
      // as README's install section has it on a host without iptables; and idmapped mounts off, as
      // on the test bed (a restored rootfs would not be the container's otherwise)
      on(host, 'sh', '-c', "mkdir -p /etc/criu && echo 'network-lock nftables' >> /etc/criu/default.conf && echo INCUS_IDMAPPED_MOUNTS_DISABLE=1 >> /etc/default/incus");
      await onAsync(host, ['env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', 'install', '-y', '-q', '--no-install-recommends', '/var/tmp/haul.deb']);
      await onAsync(host, ['systemctl', 'start', 'incus.service']);
      await onAsync(host, ['haul', 'agent', 'install', '--criu', '/usr/local/sbin/criu', '--restart']);
      await onAsync(host, ['incus', 'admin', 'init', '--preseed'], PRESEED(ADDRESS[host]!));
      on(host, 'sh', '-c', `printf 'listen = "${ADDRESS[host]}:${AGENT_PORT}"\\ncriu = "/usr/local/sbin/criu"\\n' >> /etc/haul/agent.conf`);
      await onAsync(host, ['systemctl', 'restart', 'haul-agent.service']);
    }
    await onAsync(SOURCE, ['incus', 'image', 'import', '/var/tmp/busybox.tar.gz', '--alias', 'busybox']);
    // haul's pairing, then Incus' own: what an operator does once per pair of hosts
    const token = (await onAsync(SOURCE, ['haul', 'agent', 'token'])).trim();
    await onAsync(TARGET, ['haul', 'agent', 'join'], `${token}\n`);
    for (const [host, peer] of [[SOURCE, TARGET], [TARGET, SOURCE]] as const) {
      on(host, 'sh', '-c', `printf '[peers]\\n${peer} = "${ADDRESS[peer]}:${AGENT_PORT}"\\n' >> /etc/haul/agent.conf`);
      await onAsync(host, ['systemctl', 'restart', 'haul-agent.service']);
    }
    const incusToken = (await onAsync(TARGET, ['incus', 'config', 'trust', 'add', SOURCE])).trim().split('\n').at(-1)!;
    await onAsync(SOURCE, ['incus', 'remote', 'add', TARGET, incusToken]);
  }, 600_000);
  afterAll(async () => {
    for (const host of [SOURCE, TARGET]) await downHost(host);
    scratch.remove();
  });

  it.each(['pre-copy', 'lazy'] as const)('moves a running container %s: the same processes, their memory intact, and haul says so on both hosts', async (mode) => {
    const name = `c-${mode}`;
    await onAsync(SOURCE, ['incus', 'launch', 'busybox', name, '--quiet', '--config', `user.haul.mode=${mode}`]);
    const report = async (host: string, since?: bigint) => parseReport(await onAsync(host, ['incus', 'exec', name, '--', 'haul-workload', ...reportArgs('/run/haul', since)]));
    const before = await report(SOURCE);
    const since = realtimeNs();
    await onAsync(SOURCE, ['incus', 'move', name, `${TARGET}:`, '--quiet']);

    const after = await report(TARGET, since);
    expect(after.pid).toBe(before.pid);
    expect(after.checksum).toBe(before.checksum);
    expect(after.tick).toBeGreaterThan(before.tick);
    expect(on(SOURCE, 'incus', 'list', '-f', 'csv', '-c', 'n')).not.toMatch(new RegExp(`^${name}$`, 'm'));
    for (const [host, role, result, peer] of [[SOURCE, 'source', 'moved', TARGET], [TARGET, 'destination', 'restored', SOURCE]] as const) {
      const status = JSON.parse(on(host, 'haul', 'status', '-f', 'json')) as { recent: StatusRecord[] };
      expect(status.recent.filter((record) => record.instance === name)).toEqual([expect.objectContaining({ role, mode, result, peer })]);
    }
  }, 180_000);

  it("passes a stateful stop and start through the hook and the agent to CRIU unchanged, and the container comes back as it was", async () => {
    const name = 'c-stateful';
    await onAsync(SOURCE, ['incus', 'launch', 'busybox', name, '--quiet']);
    const before = parseReport(await onAsync(SOURCE, ['incus', 'exec', name, '--', 'haul-workload', ...reportArgs('/run/haul')]));
    const logged = journalOf(SOURCE, 'haul-agent').length;
    await onAsync(SOURCE, ['incus', 'stop', '--stateful', name]);
    expect(on(SOURCE, 'incus', 'list', name, '-f', 'csv', '-c', 's').trim()).toBe('STOPPED');
    await onAsync(SOURCE, ['incus', 'start', name]);
    const after = parseReport(await onAsync(SOURCE, ['incus', 'exec', name, '--', 'haul-workload', ...reportArgs('/run/haul')]));
    expect(after.pid).toBe(before.pid);
    expect(after.checksum).toBe(before.checksum);
    const said = journalOf(SOURCE, 'haul-agent').slice(logged);
    expect(said).toMatch(/criu dump of pid \d+ is not the final dump of a live move \(a stateful stop or snapshot\): run unchanged/);
    expect(said).toMatch(/criu restore from \S+: nothing of haul's in it \(a stateful start or a native move\), run unchanged/);
  }, 120_000);
});
