import { chmodSync, chownSync, symlinkSync, writeFileSync } from 'node:fs';
import { afterEach, expect, it } from 'vitest';
import { ownerIdsOfRestore } from '../../plugin/restore-idmap.js';
import { describeOnHost } from '../support/host.js';
import { scratchDir } from '../support/scratch.js';

// as incusd writes it for a restore (Incus 6.0.4, an unprivileged container)
const UNPRIVILEGED = ['lxc.arch = linux64', 'lxc.hook.version = 1', 'lxc.idmap = u 0 1000000 1000000000', 'lxc.idmap = g 0 2000000 65536', 'lxc.rootfs.path = dir:/var/lib/incus/storage-pools/default/containers/c1/rootfs', ''].join('\n');

describeOnHost('the ids a restored container may own files by, from the liblxc config incusd wrote for its restore', ['root'], () => {
  const scratches: Array<{ remove(): void }> = [];
  afterEach(() => scratches.splice(0).forEach((scratch) => scratch.remove()));
  const config = (text: string, mode = 0o600): string => {
    const scratch = scratchDir('restore-idmap');
    scratches.push(scratch);
    const path = `${scratch.path}/lxc.conf`;
    writeFileSync(path, text);
    chmodSync(path, mode);
    return path;
  };

  it('reads its uid and gid maps apart', async () => {
    expect(await ownerIdsOfRestore(config(UNPRIVILEGED))).toEqual({
      uids: [{ first: 1_000_000, count: 1_000_000_000 }],
      gids: [{ first: 2_000_000, count: 65536 }],
    });
  });

  it('bounds nothing for a container whose config maps no ids (privileged: its root is the host root)', async () => {
    expect(await ownerIdsOfRestore(config('lxc.arch = linux64\nlxc.rootfs.path = dir:/x\n'))).toBeUndefined();
  });

  it('refuses a map it cannot read, or of one kind only, rather than bound nothing', async () => {
    await expect(ownerIdsOfRestore(config('lxc.idmap = u 0 1000000 lots\nlxc.idmap = g 0 1000000 65536\n'))).rejects.toThrow(/cannot read/);
    await expect(ownerIdsOfRestore(config('lxc.idmap = u 0 4294967000 65536\nlxc.idmap = g 0 1000000 65536\n'))).rejects.toThrow(/past 32 bits/);
    await expect(ownerIdsOfRestore(config('lxc.idmap = u 0 1000000 65536\n'))).rejects.toThrow(/uids only/);
  });

  it('reads only a file root alone writes, never through a link', async () => {
    await expect(ownerIdsOfRestore(config(UNPRIVILEGED, 0o666))).rejects.toThrow(/not a file only root writes/);
    const foreign = config(UNPRIVILEGED);
    chownSync(foreign, 65534, 65534);
    await expect(ownerIdsOfRestore(foreign)).rejects.toThrow(/not a file only root writes/);
    const real = config(UNPRIVILEGED);
    const link = `${real}.link`;
    symlinkSync(real, link);
    await expect(ownerIdsOfRestore(link)).rejects.toMatchObject({ code: 'ELOOP' });
    await expect(ownerIdsOfRestore('lxc.conf')).rejects.toThrow(/not an absolute path/);
  });
});
