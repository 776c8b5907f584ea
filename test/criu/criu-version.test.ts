import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { criuVersion } from '../../src/criu/run/criu-version.js';

describe("CRIU's version", () => {
  let dir: string;
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('comes from the CRIU a wrapper runs now, not the one it ran before', async () => {
    // the test bed's second host runs whichever CRIU build its environment names, through one script
    dir = mkdtempSync(join(tmpdir(), 'haul-criu-version-'));
    const wrapper = join(dir, 'criu');
    writeFileSync(wrapper, `#!/bin/sh\necho "Version: $(cat ${join(dir, 'runs')})"\n`, { mode: 0o755 });
    writeFileSync(join(dir, 'runs'), '4.1.1');
    expect(await criuVersion(wrapper)).toEqual({ major: 4, minor: 1, patch: 1 });
    writeFileSync(join(dir, 'runs'), '4.2.1');
    expect(await criuVersion(wrapper)).toEqual({ major: 4, minor: 2, patch: 1 });
  });

  it('fails clearly for a binary that is not there', async () => {
    dir = mkdtempSync(join(tmpdir(), 'haul-criu-version-'));
    await expect(criuVersion(join(dir, 'criu'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
