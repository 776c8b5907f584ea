import { chmodSync, lstatSync, mkdirSync, mkdtempSync, rmSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { placeImageFiles } from '../../plugin/restore-dir-files.js';
import { scratchDir } from '../support/scratch.js';

const cleanups: Array<() => void> = [];
afterEach(() => cleanups.splice(0).forEach((cleanup) => cleanup()));

/** haul's store of a migration's pages, Incus' restore dir (what the source's rsync put there), and a file of someone else's. */
function setUp(storeOnAnotherFilesystem: boolean) {
  const scratch = scratchDir('restore-links');
  cleanups.push(scratch.remove);
  // /dev/shm is a tmpfs here, the scratch dir is not: link(2) fails with EXDEV and haul copies
  const elsewhere = storeOnAnotherFilesystem ? mkdtempSync('/dev/shm/haul-restore-links-') : undefined;
  if (elsewhere) cleanups.push(() => rmSync(elsewhere, { recursive: true, force: true }));
  const paths = { store: join(elsewhere ?? scratch.path, 'store'), restore: join(scratch.path, 'restore'), victim: join(scratch.path, 'victim') };
  mkdirSync(paths.store);
  mkdirSync(paths.restore, { mode: 0o700 });
  writeFileSync(join(paths.store, 'pagemap-1.img'), 'the pagemap');
  writeFileSync(join(paths.store, 'pages-65537.img'), 'the pages');
  writeFileSync(paths.victim, 'not haul\'s to write');
  chmodSync(paths.victim, 0o600);
  return paths;
}

describe("placing the pages into Incus' restore directory, which the source filled", () => {
  for (const across of [false, true]) {
    it(`never writes through a link planted at a name it places${across ? ' (copied across filesystems)' : ''}`, async () => {
      const paths = setUp(across);
      for (const name of ['pagemap-1.img', 'pages-65537.img']) symlinkSync(paths.victim, join(paths.restore, name));
      await placeImageFiles(paths.store, paths.restore, ['pagemap-1.img', 'pages-65537.img'], { uid: 1_000_000, gid: 0 });
      expect(readFileSync(paths.victim, 'utf8')).toBe("not haul's to write");
      expect(statSync(paths.victim).mode & 0o777).toBe(0o600);
      for (const [name, text] of [['pagemap-1.img', 'the pagemap'], ['pages-65537.img', 'the pages']] as const) {
        const placed = lstatSync(join(paths.restore, name));
        expect(placed.isFile()).toBe(true);
        // the container's memory: its root (the restore dir's owner) reads it, no other user
        expect(placed.mode & 0o777).toBe(0o640);
        expect([placed.uid, placed.gid]).toEqual([1_000_000, 0]);
        expect(readFileSync(join(paths.restore, name), 'utf8')).toBe(text);
      }
    });
  }
});
