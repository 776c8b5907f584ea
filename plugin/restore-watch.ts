import { execFile } from 'node:child_process';
import { constants, openSync } from 'node:fs';
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { identify, isRunning, killRestoreTree } from '../src/host/index.js';
import { shellWord } from '../src/shell-words.js';

export type RestoreOutcome = { readonly ok: true; readonly pid: number } | { readonly ok: false; readonly error: string };

/** How often the watch looks whether CRIU is still there. */
const POLL_MS = 50;

/**
 * Watches one `criu restore` liblxc runs through the hook, which execs CRIU in its own process: the
 * restore succeeded only if CRIU ran its post-resume action (haul adds an action script; liblxc
 * gives restores none), it failed if CRIU ended without it, and a restore still running after
 * `timeoutMs` is killed (Incus 6.0.4 has no timeout of its own) and failed. The outcome is what
 * haul tells the source, which does not take Incus' word alone (a failed restore can reach the
 * source as success).
 */
export class RestoreWatch {
  private constructor(
    /** Add `--action-script scriptPath` to the restore's arguments. */
    readonly scriptPath: string,
    private readonly dir: string,
    private readonly events: Socket,
    private readonly resumed: Promise<number>,
  ) {}

  static async create(dir: string): Promise<RestoreWatch> {
    await mkdir(dir, { recursive: true, mode: 0o711 });
    const fifo = join(dir, 'restore-actions.fifo');
    await rm(fifo, { force: true });
    await promisify(execFile)('mkfifo', ['-m', '0600', fifo]);
    const scriptPath = join(dir, 'restore-actions.sh');
    await writeFile(
      scriptPath,
      `#!/bin/sh
# written by haul for one restore through Incus; see plugin/restore-watch.ts
# (1<>: opened read-write, the FIFO write never waits for a reader that may be gone)
[ "$CRTOOLS_SCRIPT_ACTION" = post-resume ] && echo "post-resume \${CRTOOLS_INIT_PID:-0}" 1<> ${shellWord(fifo)}
exit 0
`,
    );
    await chmod(scriptPath, 0o755);
    // read-write and non-blocking: see LazyEarlyActions for why
    const stream = new Socket({ fd: openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK), readable: true, writable: false });
    stream.on('error', () => {});
    const lines = createInterface({ input: stream });
    lines.on('error', () => {});
    const resumed = new Promise<number>((resolve) => {
      lines.on('line', (line) => {
        const found = /^post-resume (\d+)$/.exec(line);
        if (found) resolve(Number(found[1]));
      });
    });
    return new RestoreWatch(scriptPath, dir, stream, resumed);
  }

  /** Ends the watch of a restore that will not run. */
  async discard(): Promise<void> {
    this.events.destroy();
    await rm(this.dir, { recursive: true, force: true });
  }

  /** Follows the restore running as process `pid` (the hook's, which becomes CRIU) to its end. */
  async outcome(pid: number, timeoutMs: number): Promise<RestoreOutcome> {
    const criu = identify(pid);
    const deadline = Date.now() + timeoutMs;
    let resumedPid: number | undefined;
    void this.resumed.then((init) => (resumedPid = init));
    try {
      for (;;) {
        if (resumedPid !== undefined) return { ok: true, pid: resumedPid };
        if (!criu || !isRunning(criu)) {
          await sleep(POLL_MS); // the action's line may still be on its way through the FIFO
          if (resumedPid !== undefined) return { ok: true, pid: resumedPid };
          return { ok: false, error: 'criu restore ended without resuming the container' };
        }
        if (Date.now() >= deadline) {
          killRestoreTree(criu);
          return { ok: false, error: `criu restore did not finish within ${timeoutMs / 1000} s and was killed` };
        }
        await sleep(POLL_MS);
      }
    } finally {
      this.events.destroy();
      await rm(this.dir, { recursive: true, force: true });
    }
  }
}
