import { lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { DiskChangesError, applyDiskChanges } from '../../../proxy/disk-changes-apply.js';
import { packDiskChanges } from '../../../proxy/disk-changes-pack.js';
import { InvariantBroken, type ErrorClass, type FuzzTarget } from '../fuzzer.js';
import { chunked } from '../mutations.js';

/**
 * Where applying happens: `root`, emptied between inputs, beside a canary directory that no input
 * may touch (names never leave the root, links are never followed).
 */
let scratch: { top: string; base: string; root: string; canary: string; canaryMtimeMs: number } | undefined;
let seeds: Buffer[] = [];

async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

/** A tar made by tar-stream itself, for entry sequences packDiskChanges never writes. */
async function handMadeTar(entries: ReadonlyArray<Partial<tar.Header> & { name: string; content?: string }>): Promise<Buffer> {
  const pack = tar.pack();
  for (const { content, ...header } of entries) {
    await new Promise<void>((resolve, reject) => void pack.entry(header, content ?? '', (error) => (error ? reject(error) : resolve())));
  }
  pack.finalize();
  return collect(Readable.from(pack, { objectMode: false }));
}

/** The errors applyDiskChanges may refuse a tar with. */
export const diskChangesErrors: ErrorClass[] = [DiskChangesError];

export const diskChanges: FuzzTarget = {
  name: 'disk-changes',
  decoder: 'proxy/disk-changes-apply.ts applyDiskChanges (a tar of disk changes, applied into a scratch directory)',
  expected: diskChangesErrors,
  async open() {
    const top = mkdtempSync(join(tmpdir(), 'haul-fuzz-disk-'));
    const source = join(top, 'source');
    mkdirSync(join(source, 'etc/conf.d'), { recursive: true });
    mkdirSync(join(source, 'var/log'), { recursive: true });
    writeFileSync(join(source, 'etc/hostname'), 'c1\n');
    writeFileSync(join(source, 'etc/conf.d/a.conf'), 'x'.repeat(700));
    writeFileSync(join(source, 'var/log/empty'), '');
    symlinkSync('../etc/hostname', join(source, 'var/name'));
    const packed = packDiskChanges(source, 0);
    const whole = await collect(packed.tar);
    await packed.done;
    await rm(source, { recursive: true, force: true });
    // the root sits three levels below the scratch top, and every link in the seeds is relative and
    // reaches only the canary beside the root: a mutated link (a shortened "../canary") still ends
    // inside the scratch directory, whatever applying does with it
    const base = join(top, 'a/b/c');
    const root = join(base, 'root');
    const canary = join(base, 'canary');
    mkdirSync(root, { recursive: true });
    mkdirSync(canary);
    seeds = [
      whole,
      await handMadeTar([
        { name: 'd', type: 'directory', mode: 0o755, pax: { 'HAUL.names': '["f"]' } },
        { name: 'd/f', type: 'file', mode: 0o600, content: 'data' },
        { name: 'l', type: 'symlink', linkname: '../canary' },
      ]),
      // a directory replaced by a link to outside, after its entry: its time is set last
      await handMadeTar([
        { name: 'd', type: 'directory', mode: 0o755, mtime: new Date(0) },
        { name: 'd', type: 'symlink', linkname: '../canary' },
      ]),
      // the root itself named as a link (relative to the root's own directory)
      await handMadeTar([{ name: '.', type: 'symlink', linkname: 'canary' }]),
    ];
    scratch = { top, base, root, canary, canaryMtimeMs: (await stat(canary)).mtimeMs };
  },
  async close() {
    if (scratch) await rm(scratch.top, { recursive: true, force: true });
    scratch = undefined;
  },
  seeds: () => seeds,
  async run(input, random) {
    const { base, root, canary, canaryMtimeMs } = scratch!;
    try {
      return await applyDiskChanges(Readable.from(chunked(input, random)), root);
    } finally {
      // synchronous calls: the checks run after every input, and the thread pool's round trips
      // cost more than they do
      const around = readdirSync(base).sort().join(' ');
      const canaryNow = statSync(canary, { throwIfNoEntry: false });
      // lstat: the root itself may have been replaced by a link, whose target must not be emptied
      const rootIsDirectory = lstatSync(root, { throwIfNoEntry: false })?.isDirectory() ?? false;
      if (rootIsDirectory) for (const name of readdirSync(root)) rmSync(join(root, name), { recursive: true, force: true });
      else {
        rmSync(root, { force: true });
        mkdirSync(root);
      }
      if (around !== 'canary root' || canaryNow?.mtimeMs !== canaryMtimeMs || !rootIsDirectory) {
        // put the scratch back, so that the next inputs are charged only with what they do
        for (const name of readdirSync(base)) if (name !== 'canary' && name !== 'root') rmSync(join(base, name), { recursive: true, force: true });
        rmSync(canary, { recursive: true, force: true });
        mkdirSync(canary);
        scratch!.canaryMtimeMs = statSync(canary).mtimeMs;
        throw new InvariantBroken(
          `applying reached outside its root: ${rootIsDirectory ? 'the root is still a directory' : 'the root was replaced'}, beside it ${around}, the canary's time ${canaryNow?.mtimeMs} (was ${canaryMtimeMs})`,
        );
      }
    }
  },
};
