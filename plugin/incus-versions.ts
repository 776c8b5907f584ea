import { shownWord } from '../proxy/index.js';

/** The major version of an Incus version string (6.0.4, 7.0.2), or undefined when it is not one. */
function majorOf(version: string): number | undefined {
  const match = /^(\d{1,4})\.\d/.exec(version);
  return match ? Number(match[1]) : undefined;
}

/**
 * Why Incus `destination` cannot restore a container that Incus `source` checkpointed, where that
 * is known, or undefined (either version unknown included: the move is then tried).
 *
 * Incus 7 gives every container its systemd credentials as a bind mount at
 * /dev/.incus-systemd-credentials, which liblxc hands CRIU as an external mount; Incus 6 knows no
 * such mount and maps none on the restore, so CRIU fails it ("mnt: No mapping for … mountpoint",
 * criu/mount.c), through haul and, with the same images and restore, natively (docs/INCUS-7-PROBE.md, "Across versions"). Moving up
 * (6 to 7) works: a mount Incus 7 maps and the image lacks is not asked for.
 */
export function incusMoveProblem(source: string, destination: string): string | undefined {
  const from = majorOf(source);
  const to = majorOf(destination);
  if (from === undefined || to === undefined || from < 7 || to >= 7) return undefined;
  return `a container checkpointed by Incus ${shownWord(source)} has Incus 7's credentials mount (/dev/.incus-systemd-credentials), which Incus ${shownWord(destination)} cannot give back on the restore: move it to an Incus 7 host, or upgrade that host`;
}
