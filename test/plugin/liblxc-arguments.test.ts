import { describe, expect, it } from 'vitest';
import { mendLiblxcArguments } from '../../plugin/liblxc-arguments.js';

/** liblxc 7.0's calls on a host with cgroup2 alone, trimmed (docs/INCUS-7-PROBE.md "The calls"). */
const DUMP = ['dump', '--manage-cgroups=full', '-D', '/var/lib/incus/containers/c1/state', '--cgroup-root', 'lxc.payload.c1', '-v4', '-t', '169', '--freeze-cgroup', '/sys/fs/cgroup/lxc.payload.c1'];
const RESTORE = [
  'restore', '--manage-cgroups=full', '-D', '/var/lib/incus/containers/c1/state', '--cgroup-root', 'lxc.payload.c1',
  '--ext-mount-map', 'dev/incus:/var/lib/incus/guestapi',
  '--ext-mount-map', 'dev/.incus-systemd-credentials:/var/lib/incus/containers/c1/credentials',
  '--root', '/usr/lib/x86_64-linux-gnu/lxc/rootfs', '--restore-detached',
];

describe("liblxc's CRIU arguments, mended where CRIU cannot work with them", () => {
  it('gives a relative cgroup root its leading / on a dump and a restore, and says so', () => {
    const dump = mendLiblxcArguments('dump', DUMP);
    expect(dump.args).toEqual(DUMP.map((arg) => (arg === 'lxc.payload.c1' ? '/lxc.payload.c1' : arg)));
    expect(dump.changes).toEqual(['--cgroup-root lxc.payload.c1 → /lxc.payload.c1']);
    expect(mendLiblxcArguments('restore', RESTORE).args).toContain('/lxc.payload.c1');
  });

  it('restores a container with Incus 7 credentials mount in CRIU mount compatibility mode, once', () => {
    const once = mendLiblxcArguments('restore', RESTORE);
    expect(once.args.filter((arg) => arg === '--mntns-compat-mode')).toHaveLength(1);
    expect(mendLiblxcArguments('restore', once.args).args.filter((arg) => arg === '--mntns-compat-mode')).toHaveLength(1);
    // a dump maps the mount the other way round, and a compat mode there means nothing
    expect(mendLiblxcArguments('dump', [...DUMP, '--ext-mount-map', '/dev/.incus-systemd-credentials:dev/.incus-systemd-credentials']).args).not.toContain('--mntns-compat-mode');
  });

  it("passes what liblxc gets right as it came: per-controller roots (cgroup v1), absolute roots, Incus 6's restores", () => {
    const v1 = ['dump', '--cgroup-root', 'name=systemd:/lxc.payload.c1', '--cgroup-root', 'memory:/lxc.payload.c1', '-t', '1'];
    const absolute = ['restore', '--cgroup-root', '/lxc.payload.c1', '--ext-mount-map', 'dev/incus:/var/lib/incus/guestapi'];
    for (const [call, args] of [['dump', v1], ['restore', absolute]] as const) {
      expect(mendLiblxcArguments(call, args)).toEqual({ args, changes: [] });
    }
  });
});
