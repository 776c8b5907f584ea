/**
 * Two arguments liblxc gives CRIU that CRIU cannot work with, mended before any dump or restore
 * the hook passes on, haul's or not (docs/INCUS-7-PROBE.md has the runs that found them):
 *
 * - Where liblxc (5.0 and 7.0, src/lxc/criu.c) finds no controllers in the unified hierarchy (a
 *   host with cgroup2 alone, as systemd-nspawn gives one), it names the container's cgroup
 *   relative: `--cgroup-root lxc.payload.c1`. CRIU joins the root to the path of the
 *   hierarchy it walks as given (criu/cgroup.c), so a dump walks `…/17lxc.payload.c1` and fails,
 *   and a restore puts the tasks' cgroups where none are. CRIU's own syntax is
 *   `[controller:]/newroot`: the root gets its leading `/`.
 * - Incus (6.18 and later) gives a container its systemd credentials as a bind mount, which CRIU's mount engine
 *   (criu/mount-v2.c) fails to restore ("Failed to copy sharing from -1:…/credentials"); CRIU's
 *   compatibility engine restores it, so a restore that maps that mount runs with
 *   `--mntns-compat-mode`.
 *
 * Nothing else is changed: an argument liblxc gets right is passed as it came.
 */
export interface MendedArguments {
  readonly args: readonly string[];
  /** What was changed, for the agent's log: empty when the call is passed as it came. */
  readonly changes: readonly string[];
}

/** The mount liblxc maps for Incus' credentials (`--ext-mount-map dev/.incus-systemd-credentials:<host dir>`). */
const CREDENTIALS_MOUNT = 'dev/.incus-systemd-credentials:';

export function mendLiblxcArguments(call: 'dump' | 'restore', args: readonly string[]): MendedArguments {
  const changes: string[] = [];
  const mended = args.map((arg, at) => {
    if (args[at - 1] !== '--cgroup-root' || arg === '' || arg.startsWith('/') || arg.includes(':')) return arg;
    changes.push(`--cgroup-root ${arg} → /${arg}`);
    return `/${arg}`;
  });
  if (call === 'restore' && !args.includes('--mntns-compat-mode') && args.some((arg, at) => args[at - 1] === '--ext-mount-map' && arg.startsWith(CREDENTIALS_MOUNT))) {
    mended.push('--mntns-compat-mode');
    changes.push('--mntns-compat-mode added (the credentials mount)');
  }
  return { args: mended, changes };
}
