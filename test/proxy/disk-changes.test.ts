import { execFileSync } from 'node:child_process';
import { appendFileSync, chmodSync, chownSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import tar from 'tar-stream';
import { afterEach, describe, expect, it } from 'vitest';
import { applyDiskChanges } from '../../proxy/disk-changes-apply.js';
import { packDiskChanges } from '../../proxy/disk-changes-pack.js';
import { scratchDir } from '../support/scratch.js';

/** path -> what a restored container would see there: type, content or target, mode, owner. */
function describeTree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (relative: string): void => {
    for (const name of readdirSync(`${root}/${relative}`).sort()) {
      const path = relative ? `${relative}/${name}` : name;
      const info = lstatSync(`${root}/${path}`);
      const owner = `${(info.mode & 0o7777).toString(8)} ${info.uid}:${info.gid}`;
      if (info.isDirectory()) {
        out[path] = `dir ${owner}`;
        walk(path);
      } else if (info.isSymbolicLink()) out[path] = `link->${readlinkSync(`${root}/${path}`)} ${info.uid}:${info.gid}`;
      else out[path] = `file ${owner} ${readFileSync(`${root}/${path}`, 'utf8')}`;
    }
  };
  walk('');
  return out;
}

const scratches: Array<{ remove(): void }> = [];
afterEach(() => scratches.splice(0).forEach((s) => s.remove()));

/** A small root filesystem, and a copy of it as a snapshot would have taken it. */
async function rootAndSnapshot(): Promise<{ source: string; copy: string; since: number }> {
  const scratch = scratchDir('disk-changes');
  scratches.push(scratch);
  const source = `${scratch.path}/source`;
  mkdirSync(`${source}/etc/conf.d`, { recursive: true });
  mkdirSync(`${source}/var/log`, { recursive: true });
  mkdirSync(`${source}/old-dir/inner`, { recursive: true });
  writeFileSync(`${source}/etc/hostname`, 'c1\n');
  writeFileSync(`${source}/etc/conf.d/unchanged`, 'same\n');
  writeFileSync(`${source}/var/log/app.log`, 'line 1\n');
  writeFileSync(`${source}/old-dir/inner/file`, 'gone soon\n');
  writeFileSync(`${source}/to-delete`, 'x');
  writeFileSync(`${source}/to-rename`, 'renamed content\n');
  writeFileSync(`${source}/becomes-dir`, 'file first');
  symlinkSync('hostname', `${source}/etc/alias`);
  const copy = `${scratch.path}/copy`;
  execFileSync('cp', ['-a', source, copy]);
  // the kernel stamps ctimes from a coarse clock, a tick behind Date.now(): keep a margin each side
  await sleep(20);
  const since = Date.now();
  await sleep(20);
  return { source, copy, since };
}

describe('disk changes: what a container wrote after the snapshot reaches the destination copy', () => {
  it('makes the older copy equal the source: appends, new files and dirs, deletions, renames, type changes, owners and modes', async () => {
    const { source, copy, since } = await rootAndSnapshot();
    appendFileSync(`${source}/var/log/app.log`, 'line 2\nline 3\n');
    mkdirSync(`${source}/srv/new/deeper`, { recursive: true });
    writeFileSync(`${source}/srv/new/deeper/data`, 'fresh');
    rmSync(`${source}/to-delete`);
    rmSync(`${source}/old-dir`, { recursive: true });
    renameSync(`${source}/to-rename`, `${source}/etc/renamed`);
    rmSync(`${source}/becomes-dir`);
    mkdirSync(`${source}/becomes-dir`);
    symlinkSync('../etc/hostname', `${source}/var/host-link`);
    writeFileSync(`${source}/etc/shadow`, 'secret');
    chownSync(`${source}/etc/shadow`, 1000000, 1000042);
    chmodSync(`${source}/etc/shadow`, 0o4640);
    chmodSync(`${source}/etc/conf.d`, 0o700);

    const packed = packDiskChanges(source, since);
    const applied = await applyDiskChanges(packed.tar, copy);
    const summary = await packed.done;

    expect(describeTree(copy)).toEqual(describeTree(source));
    expect(summary.files).toBeGreaterThanOrEqual(4); // app.log, data, renamed, shadow
    expect(summary.bytes).toBeLessThan(200); // the unchanged files stayed behind
    expect(applied.removed).toBeGreaterThanOrEqual(3); // to-delete, old-dir, to-rename
    expect(applied.files).toBe(summary.files);
  });

  it('sends nothing but directory lists when nothing changed', async () => {
    const { source, copy, since } = await rootAndSnapshot();
    const packed = packDiskChanges(source, since);
    await applyDiskChanges(packed.tar, copy);
    expect(await packed.done).toMatchObject({ files: 0, symlinks: 0, bytes: 0 });
    expect(describeTree(copy)).toEqual(describeTree(source));
  });

  it('walks a large tree without holding up the agent: timers run while it packs', async () => {
    const scratch = scratchDir('disk-changes-large');
    scratches.push(scratch);
    const since = Date.now() - 1000;
    for (let d = 0; d < 40; d++) {
      mkdirSync(`${scratch.path}/root/d${d}`, { recursive: true });
      for (let f = 0; f < 100; f++) writeFileSync(`${scratch.path}/root/d${d}/f${f}`, '');
    }
    let turns = 0;
    const ticker = setInterval(() => turns++, 0);
    try {
      const packed = packDiskChanges(`${scratch.path}/root`, Date.now() + 60_000); // nothing changed since
      packed.tar.resume();
      await packed.done;
    } finally {
      clearInterval(ticker);
    }
    expect(turns).toBeGreaterThan(2);
    // and what changed in it is all there
    const packed = packDiskChanges(`${scratch.path}/root`, since);
    packed.tar.resume();
    expect(await packed.done).toMatchObject({ files: 4000, directories: 41 });
  });

  it('names a mount point in its directory but never looks at it or below it', async () => {
    const scratch = scratchDir('disk-changes-mounts');
    scratches.push(scratch);
    const root = `${scratch.path}/root`;
    mkdirSync(`${root}/mnt/share`, { recursive: true });
    writeFileSync(`${root}/mnt/share/data`, 'on another filesystem');
    writeFileSync(`${root}/kept`, 'changed');
    const packed = packDiskChanges(root, Date.now() - 60_000, { mountPoints: [Buffer.from('/'), Buffer.from('/mnt/share')] });
    const names: string[] = [];
    const extract = tar.extract();
    extract.on('entry', (header, stream, next) => {
      names.push(header.name);
      stream.resume();
      stream.on('end', next);
    });
    const extracted = new Promise<void>((resolve, reject) => extract.on('finish', () => resolve()).on('error', reject));
    packed.tar.pipe(extract as unknown as NodeJS.WritableStream);
    await Promise.all([packed.done, extracted]);
    expect(names).toContain('kept');
    expect(names).toContain('mnt');
    expect(names.some((name) => name.startsWith('mnt/share'))).toBe(false);
  });

  it('refuses names that leave the root, and never writes through a symlink the container made', async () => {
    const { copy } = await rootAndSnapshot();
    const outside = `${copy}/../outside`;
    mkdirSync(outside);
    symlinkSync(outside, `${copy}/escape`); // as a container could have planted
    for (const name of ['../evil', '/etc/evil', 'etc/../../evil', 'escape/evil']) {
      const pack = tar.pack();
      pack.entry({ name, type: 'file', size: 1, mode: 0o644 }, 'x');
      pack.finalize();
      const code = name.startsWith('escape/') ? 'HAUL_DISK_CHANGES_NOT_A_DIRECTORY' : 'HAUL_DISK_CHANGES_BAD_NAME';
      await expect(applyDiskChanges(pack as unknown as Readable, copy)).rejects.toMatchObject({ name: 'DiskChangesError', code });
    }
    expect(readdirSync(outside)).toEqual([]);
  });
});
