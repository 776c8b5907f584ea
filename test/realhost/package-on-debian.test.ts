import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, expect, it } from 'vitest';
import packageJson from '../../package.json' with { type: 'json' };
import { describeOnHost } from '../support/host.js';
import { REPO } from '../support/paths.js';
import { scratchDir } from '../support/scratch.js';

const run = promisify(execFile);
const HOST = 'haul-real-a';
const ROOT = `/var/lib/haul-testbed/realhost/${HOST}`;
/** What a package may change on a host and leave changed: logs, caches, package databases, runtime state. */
const VOLATILE = ['/proc', '/sys', '/dev', '/run', '/tmp', '/var/tmp', '/var/log', '/var/cache', '/var/lib/apt', '/var/lib/dpkg', '/var/lib/systemd', '/var/lib/incus', '/var/lib/ucf'];

const realhost = (...args: string[]): string => execFileSync(join(REPO, 'scripts/realhost'), args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024 });
const inHost = (...command: string[]): string => realhost('run', HOST, ...command);
/** For what may take seconds (apt, restarting incusd): the worker stays free to answer vitest meanwhile. */
const inHostAsync = async (...command: string[]): Promise<string> => (await run(join(REPO, 'scripts/realhost'), ['run', HOST, ...command], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 })).stdout;
const filesOfHost = (): string[] => inHost('sh', '-c', `find / -xdev \\( ${VOLATILE.map((dir) => `-path ${dir}`).join(' -o ')} \\) -prune -o -print | sort`).split('\n');
const incusdPath = (): string | undefined => {
  const pid = inHost('systemctl', 'show', '-p', 'MainPID', '--value', 'incus.service').trim();
  return inHost('cat', `/proc/${pid}/environ`).split('\0').find((entry) => entry.startsWith('PATH='))?.slice(5);
};
async function until<T>(what: string, probe: () => T | undefined, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const seen = (() => {
      try {
        return probe();
      } catch {
        return undefined;
      }
    })();
    if (seen !== undefined) return seen;
    if (Date.now() > deadline) throw new Error(`not within ${ms / 1000} s: ${what}`);
    await sleep(250);
  }
}

describeOnHost('the package on a Debian 12 host booted by systemd, with Debian\'s Incus (scripts/realhost)', ['root'], () => {
  const scratch = scratchDir('realhost');
  let before: string[] = [];
  let pathBefore: string | undefined;

  beforeAll(async () => {
    // asynchronously: a worker blocked for the minute this can take misses vitest's own calls;
    // a fresh host, whatever an interrupted run left of the last one
    await run(join(REPO, 'scripts/realhost'), ['down', HOST]);
    await run(join(REPO, 'scripts/realhost'), ['up', HOST], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 });
    const deb = (await run(join(REPO, 'scripts/package'), [join(scratch.path, 'out')], { cwd: REPO, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 })).stdout.trim();
    copyFileSync(deb, `${ROOT}/var/tmp/haul.deb`);
    // the CRIU the hook will run: the test bed's (bookworm's own fails on this kernel)
    copyFileSync('/usr/local/sbin/criu', `${ROOT}/usr/local/sbin/criu`);
    inHost('chmod', '755', '/usr/local/sbin/criu');
    // incus.socket starts incusd on its first client; the comparison needs it running from the start
    await inHostAsync('systemctl', 'start', 'incus.service');
    before = filesOfHost();
    pathBefore = incusdPath();
  }, 600_000);
  afterAll(async () => {
    await run(join(REPO, 'scripts/realhost'), ['down', HOST]);
    scratch.remove();
  });

  it('installs with apt: haul on the PATH with its own runtime, and haul-agent enabled', async () => {
    await inHostAsync('env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', 'install', '-y', '-q', '--no-install-recommends', '/var/tmp/haul.deb');
    expect(inHost('haul', '--version').trim()).toBe(packageJson.version);
    expect(inHost('systemctl', 'is-enabled', 'haul-agent.service').trim()).toBe('enabled');
  }, 120_000);

  it('haul agent install --restart: incusd, started by systemd, runs with the hook first on its PATH', async () => {
    await inHostAsync('haul', 'agent', 'install', '--criu', '/usr/local/sbin/criu', '--restart');
    const path = await until('incusd with the hook first on its PATH', () => (incusdPath()?.startsWith('/usr/local/lib/haul/hook:') ? incusdPath() : undefined));
    expect(path).toBe('/usr/local/lib/haul/hook:/usr/libexec/incus:/usr/sbin:/usr/bin:/sbin:/bin');
  }, 120_000);

  it('haul-agent runs under systemd, logs without a timestamp of its own, and comes back after a kill', async () => {
    inHost('sh', '-c', 'printf \'listen = "127.0.0.1:7444"\\ncriu = "/usr/local/sbin/criu"\\n\' >> /etc/haul/agent.conf');
    await inHostAsync('systemctl', 'start', 'haul-agent.service');
    const first = await until('haul-agent active', () => {
      const pid = inHost('systemctl', 'show', '-p', 'MainPID', '--value', 'haul-agent.service').trim();
      return inHost('systemctl', 'is-active', 'haul-agent.service').trim() === 'active' && pid !== '0' ? pid : undefined;
    });
    await until('the agent saying it listens', () => (/^haul agent \S+ for \/var\/lib\/incus: peers on 127\.0\.0\.1:7444/m.test(inHost('journalctl', '-u', 'haul-agent', '-o', 'cat', '--no-pager')) ? true : undefined));
    inHost('kill', '-9', first);
    const second = await until('haul-agent back under a new pid', () => {
      const pid = inHost('systemctl', 'show', '-p', 'MainPID', '--value', 'haul-agent.service').trim();
      return pid !== '0' && pid !== first && inHost('systemctl', 'is-active', 'haul-agent.service').trim() === 'active' ? pid : undefined;
    });
    expect(second).not.toBe(first);
  }, 120_000);

  it('haul agent uninstall --restart and apt purge leave the host as it was', async () => {
    await inHostAsync('haul', 'agent', 'uninstall', '--restart');
    await until('incusd with its own PATH again', () => (incusdPath() === pathBefore ? true : undefined));
    await inHostAsync('env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', 'purge', '-y', '-q', 'haul');
    expect(filesOfHost()).toEqual(before);
  }, 120_000);
});
