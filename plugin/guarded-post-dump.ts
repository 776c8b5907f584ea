import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** How long the script waits for haul's verdict before it leaves Incus' word standing. */
const VERDICT_WAIT_S = 60;
const POLL_MS = 50;

/**
 * The action script haul gives a pre-copy dump in place of Incus' own. At post-dump it runs Incus'
 * step as before (it waits for the destination's restore and says how it went), then waits for
 * haul's verdict: Incus 6.0.4 can report a failed restore to the source as success, and the source
 * would then be ended with no copy running anywhere. A verdict of "fail" (haul's destination saw
 * the restore fail) fails post-dump, and CRIU resumes the source. No verdict in time (no agent to
 * give one) leaves Incus' word standing. Other actions run Incus' script unchanged.
 *
 * Plain files, not FIFOs, pass the two messages: a FIFO write or open blocks for good once the
 * agent is gone, and this script runs while the container is frozen.
 */
export class GuardedPostDump {
  private closed = false;

  private constructor(
    readonly scriptPath: string,
    private readonly statusFile: string,
    private readonly verdictFile: string,
  ) {}

  static async create(dir: string, incusScript: string): Promise<GuardedPostDump> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const statusFile = join(dir, 'incus-post-dump');
    const verdictFile = join(dir, 'verdict');
    const scriptPath = join(dir, 'actions.sh');
    const quote = (value: string): string => `'${value.replace(/'/g, `'\\''`)}'`;
    await writeFile(
      scriptPath,
      `#!/bin/sh
# written by haul for one pre-copy migration through Incus; see plugin/guarded-post-dump.ts
incus_script=${quote(incusScript)}
case "$CRTOOLS_SCRIPT_ACTION" in
  post-dump)
    "$incus_script"
    status=$?
    echo "$status" > ${quote(`${statusFile}.tmp`)} && mv ${quote(`${statusFile}.tmp`)} ${quote(statusFile)}
    [ "$status" = 0 ] || exit "$status"
    waited=0
    while [ ! -s ${quote(verdictFile)} ] && [ "$waited" -lt ${VERDICT_WAIT_S * 10} ]; do sleep 0.1; waited=$((waited + 1)); done
    [ "$(cat ${quote(verdictFile)} 2>/dev/null)" = fail ] && exit 1
    exit 0 ;;
  *)
    exec "$incus_script" ;;
esac
`,
    );
    await chmod(scriptPath, 0o700);
    return new GuardedPostDump(scriptPath, statusFile, verdictFile);
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

  /** Answers the script once Incus said the restore succeeded: `fail` resumes the source. */
  async verdict(verdict: 'ok' | 'fail'): Promise<void> {
    await writeFile(`${this.verdictFile}.tmp`, `${verdict}\n`);
    await rename(`${this.verdictFile}.tmp`, this.verdictFile);
  }

  /** Stops waiting; the files stay until the migration's directory is cleared. */
  close(): void {
    this.closed = true;
  }
}
