import { constants } from 'node:fs';
import { copyFile, readdir, rename, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { ActionScript, isPagesFileName, writePagemapsForEveryCriu } from '../src/criu/index.js';

/**
 * The action script haul gives a lazy dump in place of Incus' own ("lazy-early",
 * docs/incus-native-move.md). Incus' post-dump step waits for the destination's restore,
 * CRIU 4.1.1 starts its lazy page server only once post-dump returns, and the restore itself needs
 * lazy pages: run in order they deadlock. So at post-dump haul holds CRIU while it moves the
 * images, then the script starts Incus' step detached and returns at once; the step's exit status
 * comes to haul, which then decides the source's fate on CRIU's page server (close: the source
 * ends; a bad header: CRIU resumes it). CRIU's other actions run Incus' script as before;
 * status-ready (the lazy page server listens) is reported too.
 *
 * The dump writes its images into a directory of haul's (see SourceRole: a lazy dump cannot use
 * haul's page server without waiting on CRIU's TCP cork). Before Incus' step starts, every image
 * but the page data (pages-*.img, which haul sends) moves into Incus' checkpoint directory, which
 * Incus' step then sends on as ever. If they cannot be moved, post-dump fails: CRIU resumes the
 * source, and nothing of Incus' step runs.
 */
export class LazyEarlyActions {
  private constructor(
    private readonly script: ActionScript,
    private readonly state: { abandoned: boolean; passed: boolean },
    /** Resolves when CRIU's lazy page server listens. */
    readonly statusReady: Promise<void>,
    /** Resolves when the dump is over and its images but the page data are in Incus' directory. */
    readonly postDump: Promise<void>,
    /** Resolves with the exit status of Incus' own post-dump step (0: Incus restored it). */
    readonly incusPostDump: Promise<number>,
  ) {}

  get scriptPath(): string {
    return this.script.path;
  }

  /** `images`: where the dump writes (haul's) and where Incus expects the images (its -D). */
  static async create(dir: string, incusScript: string, images: { readonly dumpDir: string; readonly checkpointDir: string }): Promise<LazyEarlyActions> {
    const script = await ActionScript.create(dir, {
      inner: incusScript,
      steps: { 'post-dump': { hold: true, inner: 'detach' }, 'status-ready': { tell: true } },
    });
    const state = { abandoned: false, passed: false };
    const postDump = script.reached('post-dump').then(async () => {
      try {
        if (state.abandoned) throw new Error('the migration was abandoned before the dump reached post-dump');
        // as the engine's lazy run does where the images stay (proxy/source-lazy.ts): before they
        // leave for Incus' rsync, in the form a destination's older CRIU reads too
        await writePagemapsForEveryCriu(images.dumpDir);
        await moveImages(images.dumpDir, images.checkpointDir);
        // abandoned while they moved: still in time to fail post-dump
        if (state.abandoned) throw new Error('the migration was abandoned at post-dump');
      } catch (error) {
        await script.answer('post-dump', false);
        throw error;
      }
      state.passed = true;
      await script.answer('post-dump', true);
    });
    postDump.catch(() => {});
    const statusReady = script.reached('status-ready').then(() => {});
    statusReady.catch(() => {});
    return new LazyEarlyActions(script, state, statusReady, postDump, script.innerStatus('post-dump'));
  }

  /**
   * The migration failed: if the dump has not passed post-dump yet, it fails there (CRIU resumes
   * the source, and Incus' step never runs) and this returns true. Past it, CRIU's lazy page server
   * is where the source resumes (LazyDump.resume), and this returns false.
   */
  abandon(): boolean {
    this.state.abandoned = true;
    return !this.state.passed;
  }

  async close(): Promise<void> {
    await this.script.close();
  }
}

/**
 * Every image of `from` but the page data, into `to`: renamed, or copied where the two are on other
 * filesystems (Incus' checkpoint directory may be on the instance's pool). All at once: each one
 * waited for in turn is time inside the freeze.
 */
async function moveImages(from: string, to: string): Promise<void> {
  const names = (await readdir(from)).filter((name) => !isPagesFileName(name));
  await Promise.all(
    names.map(async (name) => {
      try {
        await rename(join(from, name), join(to, name));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EXDEV') throw error;
        // never through whatever stands at that name: removed, then made anew
        await rm(join(to, name), { force: true });
        await copyFile(join(from, name), join(to, name), constants.COPYFILE_EXCL);
        await unlink(join(from, name));
      }
    }),
  );
}
