import { describe, expect, it } from 'vitest';
import type { Command } from 'commander';
import { buildProgram } from '../../src/cli/program.js';
import packageJson from '../../package.json' with { type: 'json' };

function run(args: string[]): { stdout: string; stderr: string; exitCode: number } {
  let stdout = '';
  let stderr = '';
  const program: Command = buildProgram()
    .exitOverride()
    .configureOutput({ writeOut: (s) => (stdout += s), writeErr: (s) => (stderr += s) });
  try {
    program.parse(args, { from: 'user' });
    return { stdout, stderr, exitCode: 0 };
  } catch (error) {
    return { stdout, stderr, exitCode: (error as { exitCode: number }).exitCode };
  }
}

describe('the haul command line', () => {
  it('prints the package version for --version and -V', () => {
    for (const flag of ['--version', '-V']) {
      const { stdout, exitCode } = run([flag]);
      expect(exitCode).toBe(0);
      expect(stdout.trim()).toBe(packageJson.version);
    }
  });

  it('explains itself for --help', () => {
    const { stdout, exitCode } = run(['--help']);
    expect(exitCode).toBe(0);
    expect(stdout).toMatch(/^Usage: haul \[options\]/);
    expect(stdout).toContain('--version');
    expect(stdout).toContain('CRIU');
  });

  it('rejects an unknown option with a usage error, not a crash', () => {
    const { stderr, exitCode } = run(['--no-such-option']);
    expect(exitCode).not.toBe(0);
    expect(stderr).toContain("unknown option '--no-such-option'");
  });
});
