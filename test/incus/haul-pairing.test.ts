import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, expect, it } from 'vitest';
import { TrustStore } from '../../src/link/trust-store.js';
import { HAUL_CLI } from '../support/build-cli.js';
import { describeOnHost } from '../support/host.js';

const SRC_STATE = '/var/lib/haul-testbed/src/haul';
const haul = async (...args: string[]): Promise<string> => (await promisify(execFile)(process.execPath, [HAUL_CLI, ...args])).stdout;
/** `haul agent join` reads its token on stdin, never as an argument (other local users can read those). */
const joinWithToken = (state: string, token: string): Promise<{ code: number | null; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    const child = execFile(process.execPath, [HAUL_CLI, '--state-dir', state, 'agent', 'join', '--name', 'joiner'], (_error, stdout, stderr) => resolve({ code: child.exitCode, stdout, stderr }));
    child.stdin!.end(`${token}\n`);
  });

describeOnHost('haul agent token and haul agent join, against a running agent', ['root', 'testbed'], () => {
  const dirs: string[] = [];
  afterEach(async () => {
    // the test bed's src host forgets the host this test made up
    await haul('--state-dir', SRC_STATE, 'trust', 'remove', 'joiner').catch(() => undefined);
    dirs.splice(0).forEach((dir) => rmSync(dir, { recursive: true, force: true }));
  });

  it('pairs a new host with src in one step: each trusts the other, and the token is good once', async () => {
    const joiner = mkdtempSync(join(tmpdir(), 'haul-joiner-'));
    dirs.push(joiner);
    const token = (await haul('--state-dir', SRC_STATE, 'agent', 'token', '--name', 'src', '--address', '127.0.0.1:18453')).trim();
    const joined = await joinWithToken(joiner, token);
    expect(joined.stdout).toMatch(/^paired with src \(127\.0\.0\.1:18453\)/);
    const joinerFingerprint = (await haul('--state-dir', joiner, 'identity')).trim();
    const srcFingerprint = (await haul('--state-dir', SRC_STATE, 'identity')).trim();
    expect((await TrustStore.open(join(joiner, 'trust.json'))).trusts(srcFingerprint)?.name).toBe('src');
    expect((await TrustStore.open(join(SRC_STATE, 'trust.json'))).trusts(joinerFingerprint)?.name).toBe('joiner');
    // the running agent now links with it: haul doctor from the joiner reaches src, trusted both ways
    const doctor = JSON.parse(await haul('--state-dir', joiner, 'doctor', '--incus-dir', join(joiner, 'none'), '--peer', 'src=127.0.0.1:18453', '-f', 'json').catch((error: { stdout: string }) => error.stdout)) as Array<{ check: string; ok: boolean }>;
    expect(doctor.find((c) => c.check === 'peer src')).toMatchObject({ ok: true });
    const again = await joinWithToken(joiner, token);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/refused the pairing \(403\)/);
  }, 60_000);
});
