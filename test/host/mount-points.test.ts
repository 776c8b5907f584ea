import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { mountPointsOf } from '../../src/host/index.js';
import { describeOnHost } from '../support/host.js';

describeOnHost('the mount points a process sees', ['root'], () => {
  it('are read from its mountinfo as the bytes of their paths, spaces and backslashes included', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'haul-mounts-'));
    const odd = join(dir, 'a b\\c');
    mkdirSync(odd);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'haul-test', odd]);
    try {
      const points = (await mountPointsOf(process.pid)).map((point) => point.toString('utf8'));
      expect(points).toContain('/');
      expect(points).toContain(odd);
    } finally {
      execFileSync('umount', [odd]);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
