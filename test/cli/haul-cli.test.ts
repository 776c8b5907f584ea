import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Command } from 'commander';
import { EXIT, exitCodeFor } from '../../cli/exit-codes.js';
import { logLineFormat } from '../../cli/log-lines.js';
import { COMMAND_GROUPS, buildProgram, commandNamed } from '../../cli/program.js';
import { MigrationFailedError, MigrationInDoubtError } from '../../proxy/index.js';
import { HAUL_CLI } from '../support/build-cli.js';
import packageJson from '../../package.json' with { type: 'json' };

async function run(args: string[]): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  let stdout = '';
  let stderr = '';
  const program: Command = await buildProgram((line) => (stdout += `${line}\n`), args);
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

  it('lists every command in --help, and suggests the right one for a misspelt command', async () => {
    const { stdout } = await run(['--help']);
    for (const name of COMMAND_GROUPS.flatMap((group) => group.commands)) expect(stdout).toMatch(new RegExp(`^  ${name}\\b`, 'm'));
    const { stderr, exitCode } = await run(['migrat']);
    expect(exitCode).not.toBe(0);
    expect(stderr).toContain('(Did you mean migrate?)');
  });

  it('loads, for a command, the group that adds it, which adds exactly the commands it is listed with', async () => {
    for (const group of COMMAND_GROUPS) {
      const program = new Command('haul');
      (await group.load())(program, () => {});
      expect(program.commands.map((command) => command.name()).sort()).toEqual([...group.commands].sort());
    }
    expect(commandNamed(['--state-dir', 'migrate', 'cache', '--listen', '0:1'])).toBe('cache');
    expect(commandNamed(['--state-dir=/x', 'migrate', '1'])).toBe('migrate');
    expect(commandNamed(['--help'])).toBeUndefined();
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

describe('what the listing commands print, for a person or a program', () => {
  it('haul trust list: lines, or with --format json (or --json) one array', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'haul-cli-'));
    try {
      const state = ['--state-dir', dir];
      expect((await run([...state, 'trust', 'list', '--format', 'json'])).stdout).toBe('[]\n');
      await run([...state, 'trust', 'add', 'dst', 'ab'.repeat(32)]);
      for (const flags of [['-f', 'json'], ['--json']]) {
        const peers = JSON.parse((await run([...state, 'trust', 'list', ...flags])).stdout) as Array<{ name: string; fingerprint: string; added: string }>;
        expect(peers).toEqual([{ name: 'dst', fingerprint: 'ab'.repeat(32), added: expect.any(String) }]);
      }
      expect((await run([...state, 'trust', 'list', '--format', 'yaml'])).exitCode).not.toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('haul status: one JSON object of what is in progress and what ended; an error, not a quiet host, for a state dir no agent kept', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'haul-cli-'));
    try {
      const missing = await run(['--state-dir', dir, 'status']);
      expect(missing.exitCode).not.toBe(0);
      expect(missing.stderr).toMatch(/no haul agent has kept its state in .*is --state-dir right/);
      mkdirSync(join(dir, 'agent'));
      writeFileSync(join(dir, 'agent', 'migrations.jsonl'), `${JSON.stringify({ id: 'm1', instance: 'c1', role: 'source', peer: 'dst', mode: 'lazy', pages: 10, bytes: 40960, startedAt: '2026-12-01T00:00:00.000Z', totalMs: 900, result: 'moved', downtimeMs: 120 })}\n`);
      const listed = JSON.parse((await run(['--state-dir', dir, 'status', '-f', 'json'])).stdout) as { inProgress: unknown[]; recent: Array<{ id: string }> };
      expect(listed.inProgress).toEqual([]);
      expect(listed.recent.map((r) => r.id)).toEqual(['m1']);
      expect((await run(['--state-dir', dir, 'status'])).stdout).toMatch(/c1 to dst lazy: moved, 10 pages, .*down 120 ms/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('how haul ends, for scripts', () => {
  const exitOf = (args: string[]): Promise<{ code: number | null; stderr: string }> =>
    new Promise((resolve) => {
      const child = execFile(process.execPath, [HAUL_CLI, ...args], (_error, _stdout, stderr) => resolve({ code: child.exitCode, stderr }));
    });

  it('2 for a wrong command line, 1 for a failure, 0 for help', async () => {
    expect((await exitOf(['--no-such-option'])).code).toBe(EXIT.usage);
    expect((await exitOf(['migrate', 'abc', '--to', '127.0.0.1:1'])).code).toBe(EXIT.usage);
    const unreachable = await exitOf(['migrate', String(process.pid), '--to', '127.0.0.1:1', '--insecure']);
    expect(unreachable.code).toBe(EXIT.failed);
    expect(unreachable.stderr).toMatch(/^haul: /);
    expect((await exitOf(['--help'])).code).toBe(EXIT.ok);
  });

  it('the same with only a command\'s own group loaded: a misspelt command, help for one, options before it', async () => {
    const misspelt = await exitOf(['migrat', '1']);
    expect(misspelt.code).toBe(EXIT.usage);
    expect(misspelt.stderr).toContain('(Did you mean migrate?)');
    expect((await exitOf(['help', 'cache'])).code).toBe(EXIT.ok);
    expect((await exitOf(['--state-dir', tmpdir(), 'migrate', '-h'])).code).toBe(EXIT.ok);
    expect((await exitOf(['--state-dir', tmpdir(), 'agent', 'run', '--no-such-option'])).code).toBe(EXIT.usage);
  });

  it('3 for a migration in doubt, told apart from a failed one by its code', () => {
    expect(exitCodeFor(new MigrationInDoubtError('lazy', 10, 20, new Error('commit unanswered')))).toBe(EXIT.inDoubt);
    expect(exitCodeFor(new MigrationFailedError('pre-copy', 10, new Error('the destination could not restore')))).toBe(EXIT.failed);
  });
});

describe('haul doctor', () => {
  it('changes nothing: on a host with no link identity it says so, with the command that makes one, and makes none', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'haul-cli-'));
    try {
      const result = await run(['--state-dir', dir, 'doctor', '--incus-dir', join(dir, 'no-incus'), '--peer', 'dst=127.0.0.1:1', '-f', 'json']);
      const checks = JSON.parse(result.stdout) as Array<{ check: string; ok: boolean; found: string; fix?: string }>;
      expect(checks.find((c) => c.check === 'link identity')).toMatchObject({ ok: false, fix: expect.stringMatching(/^haul identity/) });
      expect(checks.find((c) => c.check === 'incusd')).toMatchObject({ ok: false, fix: expect.stringContaining('--incus-dir') });
      expect(readdirSync(dir)).toEqual([]);
      // no fix sends an operator to the repository's own scripts
      expect(checks.filter((c) => c.fix && /scripts\//.test(c.fix))).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("haul doctor and haul agent run read the agent's configuration, flags first", () => {
  it('checks the peers and the CRIU the file names, and the flags\' instead where they are given', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'haul-cli-'));
    try {
      const config = join(dir, 'agent.conf');
      writeFileSync(config, 'criu = "/nonexistent/criu"\n[peers]\nfar = "127.0.0.1:1"\nnear = "127.0.0.1:2"\n');
      const doctor = async (...flags: string[]) => JSON.parse((await run(['--state-dir', dir, 'doctor', '--insecure', '--incus-dir', join(dir, 'none'), '--config', config, '-f', 'json', ...flags])).stdout) as Array<{ check: string; found: string }>;
      const fromFile = await doctor();
      expect(fromFile.filter((c) => c.check.startsWith('peer ')).map((c) => c.check)).toEqual(['peer far', 'peer near']);
      expect(fromFile.find((c) => c.check === 'CRIU')?.found).toContain('/nonexistent/criu');
      const fromFlags = await doctor('--peer', 'other=127.0.0.1:3', '--criu', '/also/nonexistent');
      expect(fromFlags.filter((c) => c.check.startsWith('peer ')).map((c) => c.check)).toEqual(['peer other']);
      expect(fromFlags.find((c) => c.check === 'CRIU')?.found).toContain('/also/nonexistent');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('haul agent run refuses a configuration it cannot use before it starts anything', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'haul-cli-'));
    try {
      const config = join(dir, 'agent.conf');
      writeFileSync(config, 'default-mode = "sideways"\n');
      const bad = await run(['--state-dir', dir, 'agent', 'run', '--config', config, '--listen', '127.0.0.1:0', '--criu', '/bin/true']);
      expect(bad.exitCode).not.toBe(0);
      expect(bad.stderr).toMatch(/agent\.conf: default-mode: expected pre-copy, lazy or off/);
      writeFileSync(config, '');
      const noListen = await run(['--state-dir', dir, 'agent', 'run', '--config', config, '--criu', '/bin/true']);
      expect(noListen.stderr).toMatch(/no address to listen on for peers: set listen in .*agent\.conf, or pass --listen/);
      // a peer's name binds a certificate and names records: one that could be a path is refused
      writeFileSync(config, '[peers]\n"../b" = "b.example:7444"\n');
      const badPeer = await run(['--state-dir', dir, 'agent', 'run', '--config', config, '--listen', '127.0.0.1:0', '--criu', '/bin/true']);
      expect(badPeer.stderr).toMatch(/agent\.conf: peers\.\.\.\/b: .*peer name.*letters, digits/);
      const badName = await run(['--state-dir', dir, 'agent', 'run', '--config', config, '--listen', '127.0.0.1:0', '--criu', '/bin/true', '--peer', 'b=b.example:7444', '--name', 'a b']);
      expect(badName.stderr).toMatch(/peer name.*letters, digits/);
      expect(readdirSync(dir)).toEqual(['agent.conf']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('log lines of the long-running commands', () => {
  it('under systemd carry a journal priority and no timestamp of their own; elsewhere an ISO timestamp', () => {
    expect(logLineFormat(true)('moved c1', 'info')).toBe('<6>moved c1');
    expect(logLineFormat(true)('BUG: x', 'error')).toBe('<3>BUG: x');
    expect(logLineFormat(false)('moved c1')).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z moved c1$/);
    expect(logLineFormat(false)('BUG: x', 'error')).toMatch(/Z error: BUG: x$/);
  });
});
