import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { shellWord } from '../src/shell-words.js';

const POLL_MS = 50;

/**
 * The action script haul gives a pre-copy dump in place of Incus' own: every action runs Incus'
 * script as before, and post-dump (which waits for the destination's restore) also leaves Incus'
 * answer where haul reads it, so the source's record says what Incus concluded beside what haul's
 * destination saw. The answer stands either way: Incus 6.0.4's source treats a dump that fails
 * after a restore it was told succeeded as a success (driver_lxc.go logs "Dump failed after
 * successful restore"), and incus move then deletes the source, so failing post-dump could not
 * save it.
 *
 * A plain file carries the answer: the agent reads it whenever it comes, and nothing has to hold
 * a FIFO open meanwhile.
 */
export class ObservedPostDump {
  private closed = false;

  private constructor(
    readonly scriptPath: string,
    private readonly statusFile: string,
  ) {}

  static async create(dir: string, incusScript: string): Promise<ObservedPostDump> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const statusFile = join(dir, 'incus-post-dump');
    const scriptPath = join(dir, 'actions.sh');
    await writeFile(
      scriptPath,
      `#!/bin/sh
# written by haul for one pre-copy migration through Incus; see plugin/observed-post-dump.ts
incus_script=${shellWord(incusScript)}
[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] || exec "$incus_script"
"$incus_script"
status=$?
echo "$status" > ${shellWord(`${statusFile}.tmp`)} && mv ${shellWord(`${statusFile}.tmp`)} ${shellWord(statusFile)}
exit "$status"
`,
    );
    await chmod(scriptPath, 0o700);
    return new ObservedPostDump(scriptPath, statusFile);
  }

  /** The exit status of Incus' own post-dump step (0: Incus says it restored); waits for it. */
  async incusPostDump(): Promise<number> {
    while (!this.closed) {
      const text = await readFile(this.statusFile, 'utf8').catch(() => '');
      if (text.trim() !== '') return Number(text.trim());
      await sleep(POLL_MS);
    }
    throw new Error('no longer following this dump');
  }

  /** Stops waiting; the script stays for CRIU's later actions (the source role sweeps old ones). */
  close(): void {
    this.closed = true;
  }
}
