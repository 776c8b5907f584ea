import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';
import type { Check } from '../../plugin/doctor.js';
import { HAUL_CLI } from '../support/build-cli.js';
import { describeOnHost } from '../support/host.js';
import { CRIU_BUILDS } from '../support/paths.js';
import { freePort } from '../support/scratch.js';

async function doctor(host: 'src' | 'dst', peer: string, extra: readonly string[] = []): Promise<{ code: number; checks: Check[] }> {
  const args = [HAUL_CLI, '--state-dir', `/var/lib/haul-testbed/${host}/haul`, 'doctor', '--json', '--incus-dir', `/var/lib/haul-testbed/${host}/incus`, '--peer', peer, ...extra];
  try {
    const { stdout } = await promisify(execFile)(process.execPath, args);
    return { code: 0, checks: JSON.parse(stdout) as Check[] };
  } catch (error) {
    const failed = error as { code: number; stdout: string };
    return { code: failed.code, checks: JSON.parse(failed.stdout) as Check[] };
  }
}

describeOnHost('haul doctor on the test bed', ['root', 'criu', 'criu-builds', 'testbed'], () => {
  it('finds everything in place on both hosts: CRIU, sysctls, incusd, the hook first on its PATH, the agent, the trusted peer', async () => {
    for (const [host, peer] of [['src', 'dst=127.0.0.1:18454'], ['dst', 'src=127.0.0.1:18453']] as const) {
      const { code, checks } = await doctor(host, peer);
      expect(checks.filter((c) => !c.ok)).toEqual([]);
      expect(checks.map((c) => c.check)).toEqual(expect.arrayContaining(['CRIU', 'vm.unprivileged_userfaultfd', 'fs.pipe-max-size', 'incusd', 'failed-restore guard (ss -K)', 'loopback guard (nftables)', 'lazy page-server port', "CRIU's network lock", 'hook wiring', "CRIU hook first on incusd's PATH", 'instances haul moves can move live', 'haul agent', `peer ${peer.split('=')[0]}`]));
      const name = peer.split('=')[0]!;
      // both hosts run the same haul, Incus and CRIU: each direction moves, in both modes
      expect(checks.find((c) => c.check === `peer ${name}`)?.found).toMatch(/haul [\d.]+, Incus 6\.0\.4, CRIU 4\.1\.1$/);
      expect(checks.find((c) => c.check === `moves to ${name}`)).toMatchObject({ ok: true, found: expect.stringMatching(/^pre-copy and lazy: .*CRIU 4\.1\.1 -> .*CRIU 4\.1\.1$/) });
      expect(checks.find((c) => c.check === `moves from ${name}`)).toMatchObject({ ok: true });
      expect(code).toBe(0);
    }
  }, 60_000);

  it("shows each direction between hosts of different CRIU versions, with both hosts' versions", async () => {
    const { checks } = await doctor('src', 'dst=127.0.0.1:18454', ['--criu', CRIU_BUILDS['4.2.1']!]);
    expect(checks.find((c) => c.check === 'moves to dst')).toMatchObject({ ok: true, found: expect.stringMatching(/^pre-copy and lazy: .*CRIU 4\.2\.1 -> .*Incus 6\.0\.4, CRIU 4\.1\.1$/) });
    expect(checks.find((c) => c.check === 'moves from dst')).toMatchObject({ ok: true, found: expect.stringMatching(/CRIU 4\.1\.1 -> .*CRIU 4\.2\.1$/) });
  }, 60_000);

  it('names an unreachable peer, with the fix, and exits non-zero', async () => {
    const { code, checks } = await doctor('src', `nowhere=127.0.0.1:${await freePort()}`);
    expect(code).toBe(1);
    expect(checks.find((c) => c.check === 'peer nowhere')).toMatchObject({ ok: false, fix: expect.stringMatching(/haul agent token there, then haul agent join here.*haul trust add nowhere/) });
  }, 60_000);
});
