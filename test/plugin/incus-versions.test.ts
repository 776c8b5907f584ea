import { describe, expect, it } from 'vitest';
import { dumpRestoreProblem, incusMoveProblem } from '../../plugin/incus-versions.js';

const CREDENTIALS = ['--ext-mount-map', '/dev/.incus-systemd-credentials:dev/.incus-systemd-credentials'];

describe('moves Incus itself cannot restore: the credentials mount (Incus 6.18 and later) on an older Incus', () => {
  it('refuses a dump that maps the credentials mount to an Incus before 6.18, naming both versions', () => {
    expect(dumpRestoreProblem(['dump', ...CREDENTIALS], '7.0.2', '6.0.4')).toMatch(/Incus 7\.0\.2 has Incus' credentials mount .* which Incus 6\.0\.4 cannot give back/);
    expect(dumpRestoreProblem(['dump', ...CREDENTIALS], '6.18', '6.17')).toBeDefined();
  });

  it('lets the rest go: moving up, a 6.18 or later destination, a dump without the mount, a version unknown', () => {
    expect(dumpRestoreProblem(['dump', ...CREDENTIALS], '7.0.2', '6.18')).toBeUndefined();
    expect(dumpRestoreProblem(['dump', ...CREDENTIALS], '7.0.2', '7.0.2')).toBeUndefined();
    expect(dumpRestoreProblem(['dump', '--ext-mount-map', '/dev/incus:dev/incus'], '6.0.4', '6.0.4')).toBeUndefined();
    expect(dumpRestoreProblem(['dump', ...CREDENTIALS], '7.0.2', '')).toBeUndefined();
    expect(incusMoveProblem('6.0.4', '7.0.2')).toBeUndefined();
    expect(incusMoveProblem('6.23', '6.20')).toBeUndefined();
  });

  it("judges from the versions alone for haul doctor", () => {
    expect(incusMoveProblem('7.0.2', '6.0.4')).toBeDefined();
    expect(incusMoveProblem('6.18', '6.0.4')).toBeDefined();
    expect(incusMoveProblem('"7.0"', '6.0.4')).toBeUndefined();
  });
});
