import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import packageJson from '../../package.json' with { type: 'json' };
import { describeOnHost } from '../support/host.js';
import { buildPackage, doctorOn, downHost, freshHost, journalOf, on, onAsync, rootOf, until } from '../support/realhost.js';
import { scratchDir } from '../support/scratch.js';

/** Two hosts on a LAN of their own (scripts/realhost up NAME ADDRESS): A is installed, paired, then left as it was. */
const HOST = 'haul-real-a';
const OTHER = 'haul-real-b';
/** A third host, where Zabbly's layout stands in for Debian's Incus. */
const ZABBLY = 'haul-real-z';
const ADDRESS: Record<string, string> = { [HOST]: '10.231.0.11', [OTHER]: '10.231.0.12' };
/** What a package may change on a host and leave changed: logs, caches, package databases, runtime state. */
const VOLATILE = ['/proc', '/sys', '/dev', '/run', '/tmp', '/var/tmp', '/var/log', '/var/cache', '/var/lib/apt', '/var/lib/dpkg', '/var/lib/systemd', '/var/lib/incus', '/var/lib/ucf'];

const inHost = (...command: string[]): string => on(HOST, ...command);
const inHostAsync = (...command: string[]): Promise<string> => onAsync(HOST, command);
const filesOf = (host: string): string[] => on(host, 'sh', '-c', `find / -xdev \\( ${VOLATILE.map((dir) => `-path ${dir}`).join(' -o ')} \\) -prune -o -print | sort`).split('\n');
const filesOfHost = (): string[] => filesOf(HOST);
const incusdPath = (): string | undefined => {
  const pid = inHost('systemctl', 'show', '-p', 'MainPID', '--value', 'incus.service').trim();
  return inHost('cat', `/proc/${pid}/environ`).split('\0').find((entry) => entry.startsWith('PATH='))?.slice(5);
};

describeOnHost('the package on Debian 12 hosts booted by systemd, with Debian\'s Incus or Zabbly\'s layout (scripts/realhost)', ['root'], () => {
  const scratch = scratchDir('realhost');
  let before: string[] = [];
  let pathBefore: string | undefined;

  beforeAll(async () => {
    // asynchronously: a worker blocked for the minute this can take misses vitest's own calls;
    // fresh hosts, whatever an interrupted run left of the last ones
    await downHost(ZABBLY);
    for (const host of [HOST, OTHER]) await freshHost(host, ADDRESS[host]);
    const deb = await buildPackage(join(scratch.path, 'out'));
    for (const host of [HOST, OTHER]) {
      copyFileSync(deb, `${rootOf(host)}/var/tmp/haul.deb`);
      // the CRIU the hook will run: the test bed's (bookworm's own fails on this kernel)
      copyFileSync('/usr/local/sbin/criu', `${rootOf(host)}/usr/local/sbin/criu`);
      on(host, 'chmod', '755', '/usr/local/sbin/criu');
      // what README's install section has an operator do on a host without iptables, before haul
      on(host, 'sh', '-c', "mkdir -p /etc/criu && echo 'network-lock nftables' >> /etc/criu/default.conf");
      // incus.socket starts incusd on its first client; the comparison needs it running from the start
      await onAsync(host, ['systemctl', 'start', 'incus.service']);
    }
    before = filesOfHost();
    pathBefore = incusdPath();
  }, 600_000);
  afterAll(async () => {
    for (const host of [HOST, OTHER, ZABBLY]) await downHost(host);
    scratch.remove();
  });

  it('installs with apt: haul on the PATH with its own runtime, and haul-agent enabled', async () => {
    for (const host of [HOST, OTHER]) {
      await onAsync(host, ['env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', 'install', '-y', '-q', '--no-install-recommends', '/var/tmp/haul.deb']);
      expect(on(host, 'haul', '--version').trim()).toBe(packageJson.version);
      expect(on(host, 'systemctl', 'is-enabled', 'haul-agent.service').trim()).toBe('enabled');
    }
  }, 180_000);

  it('haul agent install --restart: incusd, started by systemd, runs with the hook first on its PATH', async () => {
    await inHostAsync('haul', 'agent', 'install', '--criu', '/usr/local/sbin/criu', '--restart');
    const path = await until('incusd with the hook first on its PATH', () => (incusdPath()?.startsWith('/usr/local/lib/haul/hook:') ? incusdPath() : undefined));
    expect(path).toBe('/usr/local/lib/haul/hook:/usr/libexec/incus:/usr/sbin:/usr/bin:/sbin:/bin');
  }, 120_000);

  it('haul-agent runs under systemd, logs without a timestamp of its own, and comes back after a kill', async () => {
    inHost('sh', '-c', `printf 'listen = "${ADDRESS[HOST]}:7444"\\ncriu = "/usr/local/sbin/criu"\\n' >> /etc/haul/agent.conf`);
    await inHostAsync('systemctl', 'start', 'haul-agent.service');
    const first = await until('haul-agent active', () => {
      const pid = inHost('systemctl', 'show', '-p', 'MainPID', '--value', 'haul-agent.service').trim();
      return inHost('systemctl', 'is-active', 'haul-agent.service').trim() === 'active' && pid !== '0' ? pid : undefined;
    });
    await until('the agent saying it listens', () => (new RegExp(`^haul agent \\S+ for /var/lib/incus: peers on ${ADDRESS[HOST]!.replaceAll('.', '\\.')}:7444`, 'm').test(journalOf(HOST, 'haul-agent')) ? true : undefined));
    inHost('kill', '-9', first);
    const second = await until('haul-agent back under a new pid', () => {
      const pid = inHost('systemctl', 'show', '-p', 'MainPID', '--value', 'haul-agent.service').trim();
      return pid !== '0' && pid !== first && inHost('systemctl', 'is-active', 'haul-agent.service').trim() === 'active' ? pid : undefined;
    });
    expect(second).not.toBe(first);
  }, 120_000);

  it("haul agent join pairs two such hosts in one step: each trusts the other's certificate, and each host's doctor reaches the other", async () => {
    on(OTHER, 'sh', '-c', `printf 'listen = "${ADDRESS[OTHER]}:7444"\\ncriu = "/usr/local/sbin/criu"\\n' >> /etc/haul/agent.conf`);
    await onAsync(OTHER, ['systemctl', 'restart', 'haul-agent.service']);
    const token = (await inHostAsync('haul', 'agent', 'token')).trim();
    expect(token).toMatch(/^haul-pair-1\./);
    // the token on stdin, as an operator pastes it
    const joined = await onAsync(OTHER, ['haul', 'agent', 'join'], `${token}\n`);
    expect(joined).toMatch(new RegExp(`^paired with ${HOST} \\(${ADDRESS[HOST]!.replaceAll('.', '\\.')}:7444\\): each host trusts the other`, 'm'));
    await until("A's agent saying it paired", () => (journalOf(HOST, 'haul-agent').includes(`paired with ${OTHER}: trusts its certificate`) ? true : undefined));
    // good once: the same token again is refused by A
    await expect(onAsync(OTHER, ['haul', 'agent', 'join'], `${token}\n`)).rejects.toMatchObject({ stderr: expect.stringMatching(/refused the pairing/) });
    // what join tells the operator to do next: each names the other under [peers]
    for (const [host, peer] of [[HOST, OTHER], [OTHER, HOST]] as const) {
      on(host, 'sh', '-c', `printf '[peers]\\n${peer} = "${ADDRESS[peer]}:7444"\\n' >> /etc/haul/agent.conf`);
      await onAsync(host, ['systemctl', 'restart', 'haul-agent.service']);
    }
    for (const [host, peer] of [[HOST, OTHER], [OTHER, HOST]] as const) {
      const check = await until(`${host}'s doctor reaching ${peer}`, () => doctorOn(host).find((line) => line.check === `peer ${peer}` && line.ok));
      expect(check.found).toMatch(new RegExp(`^wss://${ADDRESS[peer]!.replaceAll('.', '\\.')}:7444 trusted both ways`));
    }
  }, 180_000);

  it('haul agent uninstall --restart and apt purge leave the host as it was', async () => {
    await inHostAsync('haul', 'agent', 'uninstall', '--restart');
    await until('incusd with its own PATH again', () => (incusdPath() === pathBefore ? true : undefined));
    await inHostAsync('env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', 'purge', '-y', '-q', 'haul');
    expect(filesOfHost()).toEqual(before);
  }, 120_000);

  it("on Zabbly's layout, with dpkg for real: its CRIU diverted, the hook in its place through a package upgrade, and all undone", async () => {
    await freshHost(ZABBLY);
    // no Debian Incus on this one: Zabbly's package named incus, with its CRIU in /opt/incus/bin
    await onAsync(ZABBLY, ['env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', 'purge', '-y', '-q', 'incus-base', 'incus-client']);
    for (const version of ['1', '2']) {
      copyFileSync(zabblyLikePackage(join(scratch.path, `zabbly-${version}`), version), `${rootOf(ZABBLY)}/var/tmp/incus-${version}.deb`);
    }
    copyFileSync(`${rootOf(HOST)}/var/tmp/haul.deb`, `${rootOf(ZABBLY)}/var/tmp/haul.deb`);
    await onAsync(ZABBLY, ['dpkg', '-i', '/var/tmp/incus-1.deb']);
    const zabblyFiles = (): string[] => filesOf(ZABBLY);
    const before = zabblyFiles();
    await onAsync(ZABBLY, ['env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', 'install', '-y', '-q', '--no-install-recommends', '/var/tmp/haul.deb']);

    const installed = await onAsync(ZABBLY, ['haul', 'agent', 'install']);
    expect(installed).toMatch(/\/opt\/incus\/bin\/criu diverted to \/opt\/incus\/bin\/criu\.haul-real/);
    expect(installed).toMatch(/no restart needed/);
    expect(on(ZABBLY, 'dpkg-divert', '--list', '/opt/incus/bin/criu')).toMatch(/diversion of \/opt\/incus\/bin\/criu to \/opt\/incus\/bin\/criu\.haul-real by haul/);
    // what incusd runs now is the hook, which passes a call it has no part in to Zabbly's CRIU
    expect(on(ZABBLY, '/opt/incus/bin/criu', 'check').trim()).toBe('zabbly criu 1 check');

    // an upgrade of Zabbly's package writes its CRIU to the diverted name: the hook stays
    await onAsync(ZABBLY, ['dpkg', '-i', '/var/tmp/incus-2.deb']);
    expect(on(ZABBLY, '/opt/incus/bin/criu', 'check').trim()).toBe('zabbly criu 2 check');
    expect(doctorOn(ZABBLY).find((line) => line.check === 'hook wiring')).toMatchObject({ ok: true, found: expect.stringMatching(/\/opt\/incus\/bin\/criu diverted/) });

    await onAsync(ZABBLY, ['haul', 'agent', 'uninstall']);
    expect(on(ZABBLY, '/opt/incus/bin/criu', 'check').trim()).toBe('zabbly criu 2 check');
    expect(on(ZABBLY, 'dpkg-divert', '--list')).not.toMatch(/by haul/);
    await onAsync(ZABBLY, ['env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', 'purge', '-y', '-q', 'haul']);
    expect(zabblyFiles()).toEqual(before);
  }, 240_000);
});

/**
 * A package laid out as Zabbly's incus is (REAL-HOSTS.md): incusd started through a wrapper in
 * /opt/incus/lib/systemd that puts /opt/incus/bin first, and its own CRIU there; this CRIU says
 * which version of the package it is and what it was asked.
 */
function zabblyLikePackage(dir: string, version: string): string {
  const put = (path: string, text: string, mode = 0o644): void => {
    mkdirSync(join(dir, 'tree', path, '..'), { recursive: true });
    writeFileSync(join(dir, 'tree', path), text);
    chmodSync(join(dir, 'tree', path), mode);
  };
  put('DEBIAN/control', `Package: incus\nVersion: 1:7.0.${version}-zabbly\nArchitecture: all\nMaintainer: haul tests <tests@haul.invalid>\nDescription: stands in for Zabbly's incus in haul's tests\n`);
  put('opt/incus/lib/systemd/incusd', '#!/bin/sh\nexport PATH=/opt/incus/bin:$PATH\nexec /opt/incus/bin/incusd "$@"\n', 0o755);
  put('opt/incus/bin/incusd', '#!/bin/sh\nexit 0\n', 0o755);
  put('opt/incus/bin/criu', `#!/bin/sh\necho "zabbly criu ${version} $*"\n`, 0o755);
  execFileSync('dpkg-deb', ['--root-owner-group', '--build', join(dir, 'tree'), join(dir, 'incus.deb')], { stdio: 'ignore' });
  return join(dir, 'incus.deb');
}
