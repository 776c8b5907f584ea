import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import packageJson from '../../package.json' with { type: 'json' };
import { describeOnHost } from '../support/host.js';
import { HAUL_NODE_FLAGS } from '../support/build-cli.js';
import { REPO } from '../support/paths.js';
import { scratchDir } from '../support/scratch.js';

describeOnHost('the Debian package (npm run package)', ['root'], () => {
  const scratch = scratchDir('package');
  let deb = '';
  const root = join(scratch.path, 'root');
  beforeAll(async () => {
    // asynchronously: a worker blocked while the package builds misses vitest's own calls
    deb = (await promisify(execFile)(join(REPO, 'scripts/package'), [join(scratch.path, 'out')], { cwd: REPO, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 })).stdout.trim();
    execFileSync('dpkg-deb', ['-x', deb, root]);
  }, 300_000);
  afterAll(() => scratch.remove());

  it('is haul at the version of package.json, for this architecture, depending on no Node', () => {
    expect(deb).toMatch(new RegExp(`/haul_${packageJson.version.replace(/\./g, '\\.')}_[a-z0-9]+\\.deb$`));
    const field = (name: string): string => execFileSync('dpkg-deb', ['-f', deb, name], { encoding: 'utf8' }).trim();
    expect(field('Package')).toBe('haul');
    expect(field('Version')).toBe(packageJson.version);
    expect(field('Architecture')).toBe(execFileSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).trim());
    expect(field('Depends')).not.toMatch(/nodejs/);
  });

  it('runs with its own Node runtime on a host whose PATH has none', () => {
    const env = { PATH: '/nonexistent' };
    const haul = (...args: string[]): string => execFileSync(join(root, 'usr/lib/haul/node'), [join(root, 'usr/lib/haul/app/dist/cli/haul.js'), ...args], { env, encoding: 'utf8' });
    expect(haul('--version').trim()).toBe(packageJson.version);
    expect(haul('--state-dir', join(scratch.path, 'state'), 'trust', 'list', '-f', 'json').trim()).toBe('[]');
    // the wrapper on the PATH runs that runtime, not the host's, with haul's Node flags
    expect(HAUL_NODE_FLAGS.length).toBeGreaterThan(0);
    expect(readFileSync(join(root, 'usr/bin/haul'), 'utf8').split('\n')).toContain(`exec /usr/lib/haul/node ${HAUL_NODE_FLAGS.join(' ')} /usr/lib/haul/app/dist/cli/haul.js "$@"`);
  });

  it('installs the agent as a service after incus that comes back after a failure, and its configuration as a conffile', () => {
    const unit = readFileSync(join(root, 'usr/lib/systemd/system/haul-agent.service'), 'utf8');
    expect(unit).toMatch(/^After=.*\bincus\.service\b/m);
    expect(unit).toMatch(/^Restart=on-failure$/m);
    expect(unit).toMatch(/^ExecStart=\/usr\/bin\/haul agent run$/m);
    expect(readFileSync(join(root, 'etc/haul/agent.conf'), 'utf8')).toBe(readFileSync(join(REPO, 'cli/agent.conf'), 'utf8'));
    const control = join(scratch.path, 'control');
    execFileSync('dpkg-deb', ['-e', deb, control]);
    expect(readFileSync(join(control, 'conffiles'), 'utf8').trim()).toBe('/etc/haul/agent.conf');
    for (const script of ['postinst', 'prerm', 'postrm']) execFileSync('sh', ['-n', join(control, script)]);
  });

  it('carries no test code, benchmarks or source maps', () => {
    const files = execFileSync('dpkg-deb', ['-c', deb], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 });
    expect(files).not.toMatch(/\/app\/dist\/(test|scripts)\//);
    expect(files).not.toMatch(/\/app\/dist\/.*\.map$/m);
    // no directory of the package is private: its root is the host's /
    expect(files.split('\n').filter((line) => line.startsWith('d') && !line.startsWith('drwxr-xr-x'))).toEqual([]);
    expect(files).toMatch(/\/app\/proxy\/wire\/migration\.proto$/m);
    expect(files).toMatch(/\/app\/plugin\/criu-hook\.pl$/m);
  });
});
