import { chmodSync, chownSync, lstatSync, mkdirSync, mkdtempSync, rmSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { NotAPlainFileError, makeSearchableByRoot, netnsImagesForEveryCriu, placeImageFiles } from '../../plugin/restore-dir-files.js';
import { encodeImage } from '../../src/criu/images/image-file.js';
import { TypeMagic } from '../../src/criu/images/magic.js';
import { Entries, type NetnsEntryMessage } from '../../src/criu/images/schemas.js';
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

/** A network namespace's image as CRIU 4.2 dumps a container's: ping_group_range at its default, without a value. */
function netnsImageOf42(): Buffer {
  const entry = { unix_conf: [{ type: 6, iarg: 10 }], ipv4_sysctl: [{ type: 5 }] } as unknown as NetnsEntryMessage;
  return encodeImage({ kind: 'common', typeMagic: TypeMagic.NETNS }, [Entries.netnsEntry.encode(entry)]);
}

describe("rewriting the container's network namespace image in Incus' restore directory for an older CRIU", () => {
  it('writes it anew with the owner and mode it had, never through a link planted at its name', async () => {
    const paths = setUp(false);
    const image = join(paths.restore, 'netns-9.img');
    writeFileSync(image, netnsImageOf42(), { mode: 0o640 });
    chownSync(image, 1_000_000, 1_000_000);
    expect(await netnsImagesForEveryCriu(paths.restore)).toBe(1);
    const rewritten = lstatSync(image);
    expect(rewritten.isFile()).toBe(true);
    expect([rewritten.uid, rewritten.gid, rewritten.mode & 0o777]).toEqual([1_000_000, 1_000_000, 0o640]);
    expect(readFileSync(image).length).toBeLessThan(netnsImageOf42().length);
    // and once in the form every CRIU reads, it is left alone
    expect(await netnsImagesForEveryCriu(paths.restore)).toBe(0);

    symlinkSync(paths.victim, join(paths.restore, 'netns-10.img'));
    await expect(netnsImagesForEveryCriu(paths.restore)).rejects.toThrow(NotAPlainFileError);
    expect(readFileSync(paths.victim, 'utf8')).toBe("not haul's to write");
  });
});

describe("Incus' restore directory before any restore, haul's or a stateful start's", () => {
  it("is made searchable by group 0 alone, its owner kept; a link in its place is not followed", async () => {
    const paths = setUp(false);
    chownSync(paths.restore, 1_000_000, 1_000_000);
    expect(await makeSearchableByRoot(paths.restore)).toEqual({ uid: 1_000_000 });
    const made = statSync(paths.restore);
    expect([made.mode & 0o777, made.uid, made.gid]).toEqual([0o710, 1_000_000, 0]);

    const planted = join(paths.store, 'restore-link');
    symlinkSync(paths.restore, planted);
    chmodSync(paths.restore, 0o700);
    expect(await makeSearchableByRoot(planted)).toBeUndefined();
    expect(await makeSearchableByRoot(paths.victim)).toBeUndefined();
    expect(statSync(paths.restore).mode & 0o777).toBe(0o700);
  });
});
