import { execFileSync } from 'node:child_process';
import { chownSync, existsSync, lstatSync, mkdirSync, readdirSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { applyDiskChanges } from '../../proxy/disk-changes-apply.js';
import { packDiskChanges } from '../../proxy/disk-changes-pack.js';
import { scratchDir } from '../support/scratch.js';
import { handMadeTar } from './disk-changes-trees.js';

const scratches: Array<{ remove(): void }> = [];
afterEach(() => scratches.splice(0).forEach((s) => s.remove()));

/** A container's root to apply onto, and a directory beside it that nothing may touch. */
function rootAndOutside(): { root: string; outside: string } {
  const scratch = scratchDir('disk-hostile');
  scratches.push(scratch);
  const root = `${scratch.path}/root`;
  const outside = `${scratch.path}/outside`;
  mkdirSync(root);
  mkdirSync(outside);
  writeFileSync(`${root}/keep`, 'kept\n');
  return { root, outside };
}

describe('disk changes: a tar the container shaped cannot write outside its root', () => {
  it('refuses an entry below a directory that an earlier entry turned into a symlink', async () => {
    for (const parents of [['a'], ['a', 'a/b']]) {
      const { root, outside } = rootAndOutside();
      const tar = handMadeTar([
        ...parents.map((name) => ({ name, type: 'directory' as const, mode: 0o755 })),
        { name: 'a', type: 'symlink', linkname: outside },
        { name: `${parents.at(-1)}/x`, type: 'file', mode: 0o4755, content: '#!/bin/sh\nid\n' },
      ]);
      await expect(applyDiskChanges(tar, root)).rejects.toMatchObject({ name: 'DiskChangesError', code: 'HAUL_DISK_CHANGES_NOT_A_DIRECTORY' });
      expect(readdirSync(outside)).toEqual([]);
      expect(lstatSync(`${root}/a`).isSymbolicLink()).toBe(true);
    }
  });

  it("refuses a file owned by an id outside the container's map (a setuid root program from an unprivileged container)", async () => {
    const { root } = rootAndOutside();
    const owners = { uids: [{ first: 1_000_000, count: 65536 }], gids: [{ first: 1_000_000, count: 65536 }] };
    const tar = handMadeTar([
      // owners past ustar's 262143 travel in pax records, as the packer sends them
      { name: 'mine', type: 'file', mode: 0o644, pax: { uid: '1000000', gid: '1000000' }, content: 'within the map\n' },
      { name: 'suid-root', type: 'file', mode: 0o4755, uid: 0, gid: 0, content: '#!/bin/sh\nid\n' },
    ]);
    await expect(applyDiskChanges(tar, root, { owners })).rejects.toMatchObject({ name: 'DiskChangesError', code: 'HAUL_DISK_CHANGES_BAD_OWNER' });
    expect(existsSync(`${root}/suid-root`)).toBe(false);
    expect(statSync(`${root}/mine`).uid).toBe(1_000_000);
  });

  it("takes a container's own tree, as the packer sends it, within the container's map", async () => {
    const scratch = scratchDir('disk-owned');
    scratches.push(scratch);
    const source = `${scratch.path}/source`;
    mkdirSync(`${source}/run/big`, { recursive: true });
    writeFileSync(`${source}/run/big/beat`, '1\n');
    for (const path of [source, `${source}/run`, `${source}/run/big`, `${source}/run/big/beat`]) chownSync(path, 1_000_000, 1_000_000);
    const packed = packDiskChanges(source, 0);
    const { root } = rootAndOutside();
    const owners = { uids: [{ first: 1_000_000, count: 65536 }], gids: [{ first: 1_000_000, count: 65536 }] };
    await applyDiskChanges(packed.tar, root, { owners });
    await packed.done;
    expect(statSync(`${root}/run/big/beat`).uid).toBe(1_000_000);
  });

  it('takes the root `.` only as a directory', async () => {
    for (const type of ['symlink', 'file'] as const) {
      const { root, outside } = rootAndOutside();
      const tar = handMadeTar([
        { name: '.', type, ...(type === 'symlink' ? { linkname: outside } : { content: 'x' }) },
        { name: 'x', type: 'file', content: 'x' },
      ]);
      await expect(applyDiskChanges(tar, root)).rejects.toMatchObject({ code: 'HAUL_DISK_CHANGES_BAD_ENTRY' });
      expect(lstatSync(root).isDirectory()).toBe(true);
      expect(readdirSync(root)).toEqual(['keep']);
      expect(readdirSync(outside)).toEqual([]);
    }
  });

  it('sets directory times without following a symlink that later took the directory\'s name', async () => {
    const { root, outside } = rootAndOutside();
    const long = new Date('2001-02-03T04:05:06Z');
    utimesSync(outside, long, long);
    const tar = handMadeTar([
      { name: 'd', type: 'directory', mode: 0o755, mtime: new Date('2020-01-01T00:00:00Z') },
      { name: 'd', type: 'symlink', linkname: outside },
    ]);
    await applyDiskChanges(tar, root);
    expect(lstatSync(`${root}/d`).isSymbolicLink()).toBe(true);
    expect(statSync(outside).mtime).toEqual(long);
  });

  it('refuses a name outside the grammar with a stable code, and writes nothing after it', async () => {
    const bad: Array<{ name: string; pax?: Record<string, string> }> = [
      { name: '' },
      { name: '/etc/evil', pax: {} },
      { name: '../evil', pax: {} },
      { name: 'keep/../../evil', pax: {} },
      { name: 'a//b', pax: {} },
      { name: './a', pax: {} },
      { name: 'a/./b', pax: {} },
      { name: 'a/', pax: {} }, // a trailing slash is for directories
      { name: 'a\u0000b', pax: {} },
      { name: 'n'.repeat(256), pax: {} },
      { name: `${'d/'.repeat(2100)}f`, pax: {} },
      // a name carried as bytes obeys the same grammar
      { name: 'looks-fine', pax: { 'HAUL.path': Buffer.from('../evil').toString('base64') } },
      { name: 'looks-fine', pax: { 'HAUL.path': 'not base64!' } },
    ];
    for (const { name, pax } of bad) {
      const { root } = rootAndOutside();
      const tar = handMadeTar([
        { name: 'before', type: 'file', content: 'b' },
        { name, type: 'file', content: 'x', ...(pax ? { pax } : {}) },
        { name: 'after', type: 'file', content: 'a' },
      ]);
      await expect(applyDiskChanges(tar, root), JSON.stringify(name)).rejects.toMatchObject({ name: 'DiskChangesError', code: 'HAUL_DISK_CHANGES_BAD_NAME' });
      expect(readdirSync(root).sort()).toEqual(['before', 'keep']);
    }
  });

  it('neither writes into nor empties another filesystem mounted under the root', async () => {
    const { root } = rootAndOutside();
    mkdirSync(`${root}/sub/mnt`, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'haul-test', `${root}/sub/mnt`]);
    try {
      writeFileSync(`${root}/sub/mnt/host-file`, 'not the container\'s');
      await expect(applyDiskChanges(handMadeTar([{ name: 'sub/mnt/x', type: 'file', content: 'x' }]), root)).rejects.toMatchObject({ code: 'HAUL_DISK_CHANGES_OTHER_FILESYSTEM' });
      // the root's list of names no longer has `sub`: removing it stops at the mount, which stays
      // (a nested btrfs subvolume, which has a device of its own too, must not fail the move)
      writeFileSync(`${root}/sub/beside-mnt`, 'goes');
      const dropSub = handMadeTar([{ name: '.', type: 'file', pax: { 'HAUL.names': '1' }, content: 'keep' }]);
      expect(await applyDiskChanges(dropSub, root)).toMatchObject({ notRemoved: ['sub/mnt'] });
      expect(readdirSync(`${root}/sub`)).toEqual(['mnt']);
      expect(readdirSync(`${root}/sub/mnt`)).toEqual(['host-file']);
    } finally {
      execFileSync('umount', [`${root}/sub/mnt`]);
    }
  });

  it('does not take a tar cut at an entry boundary for a whole one', async () => {
    const { root } = rootAndOutside();
    const cut = handMadeTar([{ name: 'd', type: 'directory', mode: 0o755 }], { ended: false });
    await expect(applyDiskChanges(cut, root)).rejects.toMatchObject({ code: 'HAUL_DISK_CHANGES_INCOMPLETE' });
    const afterEnd = handMadeTar([{ name: '.', type: 'file', pax: { 'HAUL.end': '1' }, content: '' }, { name: 'late', type: 'file', content: 'x' }]);
    await expect(applyDiskChanges(afterEnd, root)).rejects.toMatchObject({ code: 'HAUL_DISK_CHANGES_BAD_ENTRY' });
    expect(existsSync(`${root}/late`)).toBe(false);
  });

  it('stops at the byte cap before writing the entry that would pass it', async () => {
    const { root } = rootAndOutside();
    const tar = handMadeTar([
      { name: 'small', type: 'file', content: 's'.repeat(100) },
      { name: 'big', type: 'file', content: 'b'.repeat(20_000) },
    ]);
    await expect(applyDiskChanges(tar, root, { maxBytes: 8192 })).rejects.toMatchObject({ code: 'HAUL_DISK_CHANGES_TOO_LARGE' });
    expect(readdirSync(root).sort()).toEqual(['keep', 'small']);
    expect(existsSync(`${root}/big`)).toBe(false);
  });
});
