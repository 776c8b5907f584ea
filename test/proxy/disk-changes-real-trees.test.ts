import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, closeSync, createReadStream, existsSync, mkdirSync, openSync, readdirSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { applyDiskChanges } from '../../proxy/disk-changes-apply.js';
import { packDiskChanges } from '../../proxy/disk-changes-pack.js';
import { scratchDir } from '../support/scratch.js';
import { describeTreeBytes } from './disk-changes-trees.js';

const scratches: Array<{ remove(): void }> = [];
afterEach(() => scratches.splice(0).forEach((s) => s.remove()));

/** A root filesystem made by `prepare`, a copy of it as a snapshot would have taken it, and the snapshot's time. */
async function snapshotOf(prepare: (source: string) => void): Promise<{ source: string; copy: string; since: number }> {
  const scratch = scratchDir('disk-trees');
  scratches.push(scratch);
  const source = `${scratch.path}/source`;
  mkdirSync(source);
  prepare(source);
  const copy = `${scratch.path}/copy`;
  execFileSync('cp', ['-a', source, copy]);
  // the kernel stamps ctimes from a coarse clock, a tick behind Date.now(): keep a margin each side
  await sleep(20);
  const since = Date.now();
  await sleep(20);
  return { source, copy, since };
}

const inRoot = (root: string, ...parts: Array<string | Buffer>): Buffer => Buffer.concat([Buffer.from(`${root}/`), ...parts.map((part) => Buffer.from(part))]);

/** Packs source's changes and applies them onto copy, counting the bytes of tar between them. */
async function carry(source: string, copy: string, since: number): Promise<{ wireBytes: number }> {
  const packed = packDiskChanges(source, since);
  let wireBytes = 0;
  // counted on the way, not by a 'data' listener: that would let chunks flow before the applier reads
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      wireBytes += chunk.length;
      done(null, chunk);
    },
  });
  const [applied] = await Promise.all([applyDiskChanges(counter, copy), pipeline(packed.tar, counter), packed.done]);
  const sent = await packed.done;
  expect([applied.files, applied.directories, applied.symlinks]).toEqual([sent.files, sent.directories, sent.symlinks]);
  return { wireBytes };
}

async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

describe('disk changes: the trees containers really hold come across whole', () => {
  it('carries names, directory names and symlink targets that are not UTF-8, and deletes such names', async () => {
    const { source, copy, since } = await snapshotOf((source) => writeFileSync(inRoot(source, Buffer.from([0x6f, 0x6c, 0x64, 0xfe])), 'old'));
    rmSync(inRoot(source, Buffer.from([0x6f, 0x6c, 0x64, 0xfe])));
    mkdirSync(inRoot(source, Buffer.from([0x64, 0xff])));
    writeFileSync(inRoot(source, Buffer.from([0x64, 0xff]), '/', Buffer.from([0x66, 0xe9])), 'latin-1 name');
    symlinkSync(Buffer.from([0x74, 0xfb]), inRoot(source, Buffer.from([0x6c, 0xfa])));
    writeFileSync(`${source}/plain`, 'still fine');
    await carry(source, copy, since);
    expect(describeTreeBytes(copy)).toEqual(describeTreeBytes(source));
    expect(Object.keys(describeTreeBytes(copy))).toContain('d\\xff/f\\xe9');
  });

  it('keeps a sparse file sparse: on the wire and on the destination', async () => {
    const size = 512 * 1024 * 1024;
    const { source, copy, since } = await snapshotOf(() => {});
    const image = `${source}/disk.img`;
    writeFileSync(image, '');
    truncateSync(image, size);
    const fd = openSync(image, 'r+');
    writeSync(fd, 'head');
    writeSync(fd, 'middle', size / 2);
    writeSync(fd, 'tail', size - 4);
    closeSync(fd);
    const { wireBytes } = await carry(source, copy, since);
    expect(wireBytes).toBeLessThan(1024 * 1024);
    const applied = statSync(`${copy}/disk.img`);
    expect(applied.size).toBe(size);
    expect(applied.blocks * 512).toBeLessThan(1024 * 1024);
    expect(await sha256(`${copy}/disk.img`)).toBe(await sha256(image));
  });

  it('carries a directory of 50,000 names, with the deletions in it', async () => {
    const name = (i: number): string => `${String(i).padStart(6, '0')}-${'a-rather-long-file-name-as-package-caches-make-them'.repeat(2)}`;
    const { source, copy, since } = await snapshotOf((source) => {
      mkdirSync(`${source}/cache`);
      for (let i = 0; i < 50_000; i++) writeFileSync(`${source}/cache/${name(i)}`, '');
    });
    rmSync(`${source}/cache/${name(7)}`);
    rmSync(`${source}/cache/${name(49_999)}`);
    writeFileSync(`${source}/cache/new`, 'new');
    await carry(source, copy, since);
    const names = readdirSync(`${copy}/cache`);
    expect(names).toHaveLength(49_999);
    expect(names).toContain('new');
    expect(existsSync(`${copy}/cache/${name(7)}`)).toBe(false);
    expect(names.sort()).toEqual(readdirSync(`${source}/cache`).sort());
  }, 300_000); // making and copying 50,000 files takes most of it: 10 s idle, 80 s on a busy 2-core VM

  it('keeps a file mode of 0 (as /etc/shadow has on some distributions)', async () => {
    const { source, copy, since } = await snapshotOf(() => {});
    writeFileSync(`${source}/shadow`, 'root:*:1::::::\n');
    chmodSync(`${source}/shadow`, 0);
    await carry(source, copy, since);
    expect(statSync(`${copy}/shadow`).mode & 0o7777).toBe(0);
  });

  it('never packs under a cap what the applier refuses under the same cap', async () => {
    const { source, copy, since } = await snapshotOf(() => {});
    mkdirSync(`${source}/dir-${'n'.repeat(150)}`);
    for (let i = 0; i < 6; i++) writeFileSync(`${source}/dir-${'n'.repeat(150)}/file-${i}`, 'x'.repeat(700 * i));
    let packedUnderCap = 0;
    for (let maxBytes = 4096; maxBytes < 40_000; maxBytes += 1536) {
      const packed = packDiskChanges(source, since, { maxBytes });
      const applied = applyDiskChanges(packed.tar, copy, { maxBytes });
      applied.catch(() => {});
      if (await packed.done.then(() => true, () => false)) {
        await applied;
        packedUnderCap++;
      } else {
        await expect(applied).rejects.toThrow();
      }
    }
    expect(packedUnderCap).toBeGreaterThan(3); // the loop reached caps that pass
  });

  it('fails the pack, with a stable code, once the changes pass the byte cap', async () => {
    const { source, copy, since } = await snapshotOf(() => {});
    for (let i = 0; i < 5; i++) writeFileSync(`${source}/file-${i}`, 'x'.repeat(4000));
    const packed = packDiskChanges(source, since, { maxBytes: 8192 });
    const applied = applyDiskChanges(packed.tar, copy);
    await expect(packed.done).rejects.toMatchObject({ name: 'DiskChangesError', code: 'HAUL_DISK_CHANGES_TOO_LARGE' });
    // the destination never takes the cut stream for a whole one
    await expect(applied).rejects.toThrow();
  });
});
