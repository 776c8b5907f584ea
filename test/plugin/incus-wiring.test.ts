import { chmodSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { detectIncusPackaging, unwireHook, wireHook } from '../../plugin/incus-wiring.js';
import { describeOnHost } from '../support/host.js';
import { scratchDir } from '../support/scratch.js';

/** Every file below `root` with its contents: what a host looks like, to compare before and after. */
function tree(root: string): Record<string, string> {
  const files: Record<string, string> = {};
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else files[relative(root, path)] = `${(statSync(path).mode & 0o777).toString(8)} ${readFileSync(path, 'latin1')}`;
    }
  };
  walk(root);
  return files;
}

function put(root: string, path: string, text: string, mode = 0o644): void {
  mkdirSync(dirname(join(root, path)), { recursive: true });
  writeFileSync(join(root, path), text);
  chmodSync(join(root, path), mode);
}

describeOnHost('haul agent install on the Incus that Debian and Zabbly ship', ['root'], () => {
  const scratches: Array<{ remove(): void }> = [];
  afterEach(() => scratches.splice(0).forEach((scratch) => scratch.remove()));
  const host = (): string => {
    const scratch = scratchDir('wiring');
    scratches.push(scratch);
    return scratch.path;
  };

  it("Debian's incus.service: a drop-in whose PATH, read after /etc/default/incus, has the hook first, and uninstall leaves the host as it was", async () => {
    const root = host();
    mkdirSync(join(root, 'run/systemd/system'), { recursive: true });
    put(root, 'usr/lib/systemd/system/incus.service', '[Service]\nEnvironmentFile=-/etc/default/incus\nExecStart=/usr/libexec/incus/incusd --group incus-admin\n');
    put(root, 'etc/default/incus', '# Debian\nPATH=/usr/libexec/incus:/usr/sbin:/usr/bin:/sbin:/bin\n');
    put(root, 'usr/sbin/criu', '#!/bin/sh\necho CRIU\n', 0o755);
    const before = tree(root);
    expect(await detectIncusPackaging(root)).toBe('systemd');

    const wiring = await wireHook({ hookDir: '/usr/local/lib/haul/hook', root });
    expect(wiring).toMatchObject({ packaging: 'systemd', hook: '/usr/local/lib/haul/hook/criu', realCriu: '/usr/sbin/criu', needsRestart: true });
    const dropIn = readFileSync(join(root, 'etc/systemd/system/incus.service.d/haul.conf'), 'utf8');
    const pathFile = /^EnvironmentFile=-(\S+)$/m.exec(dropIn)![1]!;
    expect(readFileSync(join(root, pathFile), 'utf8')).toMatch(/^PATH=\/usr\/local\/lib\/haul\/hook:\/usr\/libexec\/incus:\/usr\/sbin:\/usr\/bin:\/sbin:\/bin$/m);
    expect(readFileSync(join(root, 'usr/local/lib/haul/hook/criu'), 'utf8')).toContain('/usr/sbin/criu');

    await unwireHook(wiring, root);
    const after = tree(root);
    expect(after).toEqual(before);
    // and the directories it made are gone again
    expect(readdirSync(join(root, 'usr'))).toEqual(['lib', 'sbin']);
    expect(readdirSync(join(root, 'etc')).sort()).toEqual(['default']);
  });

  it("Zabbly's /opt/incus: its CRIU diverted (package upgrades write to the diverted name), the hook in its place, and undone exactly", async () => {
    const root = host();
    put(root, 'opt/incus/lib/systemd/incusd', '#!/bin/sh\nexport PATH=/opt/incus/bin:$PATH\nexec /opt/incus/bin/incusd "$@"\n', 0o755);
    put(root, 'opt/incus/bin/criu', '#!/bin/sh\necho ZABBLY CRIU\n', 0o755);
    put(root, 'var/lib/dpkg/diversions', '');
    const before = tree(root);
    expect(await detectIncusPackaging(root)).toBe('zabbly');

    const wiring = await wireHook({ hookDir: '/usr/local/lib/haul/hook', root });
    expect(wiring).toMatchObject({ packaging: 'zabbly', hook: '/opt/incus/bin/criu', realCriu: '/opt/incus/bin/criu.haul-real', needsRestart: false });
    expect(readFileSync(join(root, 'opt/incus/bin/criu.haul-real'), 'utf8')).toContain('ZABBLY CRIU');
    expect(readFileSync(join(root, 'opt/incus/bin/criu'), 'utf8')).toContain('/opt/incus/bin/criu.haul-real');
    expect(readFileSync(join(root, 'var/lib/dpkg/diversions'), 'utf8')).toBe('/opt/incus/bin/criu\n/opt/incus/bin/criu.haul-real\nhaul\n');
    // installing again changes nothing
    expect(await wireHook({ hookDir: '/usr/local/lib/haul/hook', root })).toEqual(wiring);

    await unwireHook(wiring, root);
    // dpkg keeps the previous diversions file as its own backup on every change: not haul's
    const { 'var/lib/dpkg/diversions-old': _backup, ...after } = tree(root);
    expect(after).toEqual(before);
  });

  it('an incusd no unit starts (systemd not running the host, as on the test bed): the hook alone, in its directory', async () => {
    const root = host();
    put(root, 'usr/lib/systemd/system/incus.service', '[Service]\nExecStart=/usr/libexec/incus/incusd\n');
    put(root, 'usr/local/sbin/criu', '#!/bin/sh\necho CRIU\n', 0o755);
    expect(await detectIncusPackaging(root)).toBe('by-hand');
    const wiring = await wireHook({ hookDir: '/hook', realCriu: '/usr/local/sbin/criu', root });
    expect(wiring).toMatchObject({ packaging: 'by-hand', hook: '/hook/criu', files: [], needsRestart: true });
    expect(readdirSync(join(root, 'hook')).sort()).toEqual(['criu', 'criu-hook.pl']);
  });

  it('refuses a CRIU that would be the hook itself, by any name, and leaves the host as it was', async () => {
    const root = host();
    put(root, 'opt/incus/lib/systemd/incusd', '#!/bin/sh\n', 0o755);
    put(root, 'opt/incus/bin/criu', '#!/bin/sh\necho ZABBLY CRIU\n', 0o755);
    put(root, 'var/lib/dpkg/diversions', '');
    const before = tree(root);
    for (const realCriu of ['/opt/incus/bin/criu', 'criu']) {
      await expect(wireHook({ hookDir: '/usr/local/lib/haul/hook', realCriu, root })).rejects.toThrow(/takes \/opt\/incus\/bin\/criu's place/);
    }
    expect(tree(root)).toEqual(before);
    await expect(wireHook({ hookDir: 'relative/hook', root })).rejects.toThrow(/absolute path/);
    const plain = host();
    put(plain, 'hook/criu', '#!/bin/sh\n# haul-criu-hook: an older one\n', 0o755);
    await expect(wireHook({ hookDir: '/hook', realCriu: '/hook/criu', root: plain })).rejects.toThrow(/haul's hook itself/);
  });
});
