import { execFile } from 'node:child_process';
import { constants, createReadStream } from 'node:fs';
import { chmod, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { shellWord } from '../../shell-words.js';

/**
 * Lets haul decide, at CRIU's post-dump, what happens to the dumped tasks. CRIU runs its action
 * script at post-dump with the tasks still frozen and every image written; if the script fails, CRIU
 * resumes the tasks, and only if it succeeds does it kill them (criu/cr-dump.c cr_dump_finish). So
 * the source keeps running until the destination has confirmed the restore: `release(true)` ends it,
 * `release(false)` (or haul going away) gives it back.
 *
 * The script talks to haul through two FIFOs beside it, so it needs nothing but /bin/sh.
 */
export class PostDumpGate {
  private answered = false;
  private hasReached = false;
  private constructor(
    readonly scriptPath: string,
    private readonly toHaul: string,
    private readonly toCriu: string,
    /** Resolves when CRIU has reached post-dump; rejects if the gate is closed first. */
    readonly reached: Promise<void>,
  ) {}

  /** Creates the script and its FIFOs in `dir` (a directory of haul's, not CRIU's image dir). */
  static async create(dir: string): Promise<PostDumpGate> {
    const toHaul = join(dir, 'post-dump.to-haul');
    const toCriu = join(dir, 'post-dump.to-criu');
    await promisify(execFile)('mkfifo', ['-m', '0600', toHaul, toCriu]);
    const scriptPath = join(dir, 'post-dump.sh');
    await writeFile(
      scriptPath,
      [
        '#!/bin/sh',
        '# written by haul: at post-dump, ask haul whether the dumped tasks may die',
        '[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] || exit 0',
        `echo post-dump > ${shellWord(toHaul)} || exit 1`,
        `read answer < ${shellWord(toCriu)} || exit 1`,
        '[ "$answer" = ok ]',
        '',
      ].join('\n'),
    );
    await chmod(scriptPath, 0o700);
    const reached = new Promise<void>((resolve, reject) => {
      // opening a FIFO for reading waits (in libuv's thread pool) for the script to open it
      createReadStream(toHaul)
        .on('data', () => resolve())
        .on('end', () => reject(new Error('CRIU did not reach post-dump')))
        .on('error', reject);
    });
    reached.catch(() => {});
    const gate = new PostDumpGate(scriptPath, toHaul, toCriu, reached);
    void reached.then(() => (gate.hasReached = true), () => {});
    return gate;
  }

  /**
   * Answers CRIU's post-dump: true lets the dump succeed (the tasks die), false resumes them. Before
   * CRIU has reached post-dump there is no one to answer, and nothing happens.
   */
  async release(ok: boolean): Promise<void> {
    if (this.answered || !this.hasReached) return;
    this.answered = true;
    const fifo = await open(this.toCriu, constants.O_WRONLY);
    try {
      await fifo.write(ok ? 'ok\n' : 'fail\n');
    } finally {
      await fifo.close();
    }
  }

  /** Unblocks the wait for post-dump when CRIU failed before reaching it. */
  async close(): Promise<void> {
    try {
      const writer = await open(this.toHaul, constants.O_WRONLY | constants.O_NONBLOCK);
      await writer.close();
    } catch {
      // nobody is waiting
    }
  }
}
