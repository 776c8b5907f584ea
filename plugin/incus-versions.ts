import { shownWord } from '../proxy/index.js';

/** Incus' credentials mount came with Incus 6.18 (API extension instance_systemd_credentials). */
const CREDENTIALS_SINCE = [6, 18] as const;
/** How liblxc's dump names the mount (`--ext-mount-map /dev/.incus-systemd-credentials:…`). */
const CREDENTIALS_MOUNT = '/dev/.incus-systemd-credentials:';

/** [major, minor] of an Incus version string (6.0.4, 7.0.2), or undefined when it is not one. */
function versionOf(version: string): readonly [number, number] | undefined {
  const match = /^(\d{1,4})\.(\d{1,4})/.exec(version);
  return match ? [Number(match[1]), Number(match[2])] : undefined;
}

/** Whether Incus `version` gives containers the credentials mount; undefined when unknown. */
function hasCredentialsMount(version: string): boolean | undefined {
  const known = versionOf(version);
  if (!known) return undefined;
  return known[0] > CREDENTIALS_SINCE[0] || (known[0] === CREDENTIALS_SINCE[0] && known[1] >= CREDENTIALS_SINCE[1]);
}

/**
 * Incus from 6.18 on gives every container its systemd credentials as a bind mount at
 * /dev/.incus-systemd-credentials, which liblxc hands CRIU as an external mount; an older Incus
 * maps no such mount on the restore, so CRIU fails it ("mnt: No mapping for … mountpoint",
 * criu/mount.c), through haul and, with the same images and restore, natively
 * (docs/INCUS-7-PROBE.md, "Across versions"). Moving up works: a mount the destination maps and
 * the image lacks is not asked for.
 */
function credentialsProblem(source: string, destination: string): string {
  return `a container checkpointed by Incus ${shownWord(source)} has Incus' credentials mount (/dev/.incus-systemd-credentials, Incus 6.18 and later), which Incus ${shownWord(destination)} cannot give back on the restore: move it to a host with Incus 6.18 or later, or upgrade that host`;
}

/**
 * Why this dump (`dumpArgs`, liblxc's) cannot be restored by Incus `destination`, or undefined
 * (the destination's version unknown included: the move is then tried). Decided from the dump
 * itself: the credentials mount among its external mounts.
 */
export function dumpRestoreProblem(dumpArgs: readonly string[], source: string, destination: string): string | undefined {
  const mapsCredentials = dumpArgs.some((arg, at) => dumpArgs[at - 1] === '--ext-mount-map' && arg.startsWith(CREDENTIALS_MOUNT));
  return mapsCredentials && hasCredentialsMount(destination) === false ? credentialsProblem(source, destination) : undefined;
}

/** The same judged from the versions alone, for `haul doctor` (no dump to look at): undefined unless both are known. */
export function incusMoveProblem(source: string, destination: string): string | undefined {
  return hasCredentialsMount(source) === true && hasCredentialsMount(destination) === false ? credentialsProblem(source, destination) : undefined;
}
