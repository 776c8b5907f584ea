import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { criuVersion } from '../../src/criu/run/criu-version.js';

/** A stand-in for CRIU that says `version` and counts how often it was asked. */
function fakeCriu(dir: string, version: string): string {
  const path = join(dir, 'criu');
  const next = join(dir, 'criu.new');
  writeFileSync(next, `#!/bin/sh\necho x >> ${join(dir, 'asked')}\necho "Version: ${version}"\n`, { mode: 0o755 });
  renameSync(next, path); // as a package upgrade replaces it
  return path;
}

const timesAsked = (dir: string): number => readFileSync(join(dir, 'asked'), 'utf8').split('\n').filter(Boolean).length;

describe("CRIU's version", () => {
  let dir: string;
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('is asked of a binary once, not again on every migration', async () => {
    dir = mkdtempSync(join(tmpdir(), 'haul-criu-version-'));
    const criu = fakeCriu(dir, '4.1.1');
    expect(await criuVersion(criu)).toEqual({ major: 4, minor: 1, patch: 1 });
    expect(await criuVersion(criu)).toEqual({ major: 4, minor: 1, patch: 1 });
    expect(timesAsked(dir)).toBe(1);
  });

  it('is asked again once the binary was replaced, so an upgrade to 4.2 changes the header layout', async () => {
    dir = mkdtempSync(join(tmpdir(), 'haul-criu-version-'));
    const criu = fakeCriu(dir, '4.1.1');
    expect(await criuVersion(criu)).toMatchObject({ minor: 1 });
    fakeCriu(dir, '4.2.1');
    expect(await criuVersion(criu)).toEqual({ major: 4, minor: 2, patch: 1 });
    expect(timesAsked(dir)).toBe(2);
  });

  it('fails clearly for a binary that is not there, and works once it is', async () => {
    dir = mkdtempSync(join(tmpdir(), 'haul-criu-version-'));
    const criu = join(dir, 'criu');
    await expect(criuVersion(criu)).rejects.toMatchObject({ code: 'ENOENT' });
    fakeCriu(dir, '4.1.1');
    expect(await criuVersion(criu)).toMatchObject({ major: 4, minor: 1 });
  });
});
