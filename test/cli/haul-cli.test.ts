import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Command } from 'commander';
import { buildProgram } from '../../cli/program.js';
import packageJson from '../../package.json' with { type: 'json' };

async function run(args: string[]): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  let stdout = '';
  let stderr = '';
  const program: Command = buildProgram((line) => (stdout += `${line}\n`));
  // subcommands take these settings only when made after them, so set them on every command
  const capture = (command: Command): void => {
    command.exitOverride().configureOutput({ writeOut: (s) => (stdout += s), writeErr: (s) => (stderr += s) });
    command.commands.forEach(capture);
  };
  capture(program);
  try {
    await program.parseAsync(args, { from: 'user' });
    return { stdout, stderr, exitCode: 0 };
  } catch (error) {
    const { exitCode, message } = error as { exitCode?: number; message: string };
    return { stdout, stderr: stderr || message, exitCode: exitCode ?? 1 };
  }
}

describe('the haul command line', () => {
  it('prints the package version for --version and -V', async () => {
    for (const flag of ['--version', '-V']) {
      const { stdout, exitCode } = await run([flag]);
      expect(exitCode).toBe(0);
      expect(stdout.trim()).toBe(packageJson.version);
    }
  });

  it('explains itself for --help', async () => {
    const { stdout, exitCode } = await run(['--help']);
    expect(exitCode).toBe(0);
    expect(stdout).toMatch(/^Usage: haul \[options\]/);
    expect(stdout).toContain('--version');
    expect(stdout).toContain('CRIU');
  });

  it('rejects an unknown option with a usage error, not a crash', async () => {
    const { stderr, exitCode } = await run(['--no-such-option']);
    expect(exitCode).not.toBe(0);
    expect(stderr).toContain("unknown option '--no-such-option'");
  });
});

describe('haul identity and haul trust', () => {
  it('create this host\'s identity once, and pin, list and forget peers', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'haul-cli-'));
    try {
      const state = ['--state-dir', dir];
      const first = await run([...state, 'identity']);
      expect(first.stdout.trim()).toMatch(/^[0-9a-f]{64}$/);
      expect((await run([...state, 'identity'])).stdout).toBe(first.stdout);

      const peerFingerprint = 'AB:'.repeat(31) + 'CD';
      expect((await run([...state, 'trust', 'add', 'dst', peerFingerprint])).stdout).toBe(`trusted dst ${'ab'.repeat(31)}cd\n`);
      // a certificate file works as well as a fingerprint
      expect((await run([...state, 'trust', 'add', 'self', join(dir, 'link.crt')])).stdout).toBe(`trusted self ${first.stdout.trim()}\n`);
      const list = (await run([...state, 'trust', 'list'])).stdout;
      expect(list).toMatch(new RegExp(`^dst\t${'ab'.repeat(31)}cd\t`, 'm'));
      expect(list).toMatch(/^self\t/m);
      expect((await run([...state, 'trust', 'remove', 'dst'])).stdout).toBe('removed dst\n');
      expect((await run([...state, 'trust', 'list'])).stdout).not.toMatch(/^dst/m);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuse what is not a fingerprint, and a peer they do not know', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'haul-cli-'));
    try {
      const bad = await run(['--state-dir', dir, 'trust', 'add', 'x', 'not-a-fingerprint']);
      expect(bad.exitCode).not.toBe(0);
      expect(bad.stderr).toMatch(/neither a sha256 fingerprint nor a readable certificate file/);
      const unknown = await run(['--state-dir', dir, 'trust', 'remove', 'nobody']);
      expect(unknown.exitCode).not.toBe(0);
      expect(unknown.stderr).toMatch(/no trusted peer named nobody/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('haul migrate and haul cache', () => {
  it('refuse arguments that make no sense, before touching anything', async () => {
    const badPid = await run(['migrate', 'abc', '--to', '127.0.0.1:1', '--insecure']);
    expect(badPid.exitCode).not.toBe(0);
    expect(badPid.stderr).toMatch(/a process id is a positive whole number/);
    const noTarget = await run(['migrate', '123']);
    expect(noTarget.stderr).toMatch(/required option '--to <host:port>' not specified/);
    const badListen = await run(['cache', '--listen', 'nowhere', '--dir', '/tmp/x']);
    expect(badListen.stderr).toMatch(/expected ADDRESS:PORT/);
  });

  it('say plainly when the destination cannot be reached, and leave the process alone', async () => {
    const result = await run(['migrate', String(process.pid), '--to', '127.0.0.1:1', '--insecure']);
    expect(result.exitCode).not.toBe(0);
    expect(result.stderr).toMatch(/ECONNREFUSED|connect/);
  });
});
