import { setTimeout as sleep } from 'node:timers/promises';
import { ActionScript } from '../src/criu/index.js';
import type { RestoreOutcome } from '../proxy/index.js';
import { identify, isRunning, killRestoreTree } from '../src/host/index.js';


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
    private readonly script: ActionScript,
    private readonly resumed: Promise<number>,
  ) {}

  /** Add `--action-script scriptPath` to the restore's arguments. */
  get scriptPath(): string {
    return this.script.path;
  }

  static async create(dir: string): Promise<RestoreWatch> {
    // CRIU runs it for the restored container: enterable by any user, its FIFOs root's alone
    const script = await ActionScript.create(dir, { steps: { 'post-resume': { tell: true } }, runnableByAnyone: true });
    return new RestoreWatch(script, script.reached('post-resume'));
  }

  /** Ends the watch of a restore that will not run. */
  async discard(): Promise<void> {
    await this.script.close({ remove: true });
  }

  /** Follows the restore running as process `pid` (the hook's, which becomes CRIU) to its end. */
  async outcome(pid: number, timeoutMs: number): Promise<RestoreOutcome> {
    const criu = identify(pid);
    const deadline = Date.now() + timeoutMs;
    let resumedPid: number | undefined;
    void this.resumed.then((init) => (resumedPid = init), () => {});
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
      await this.script.close({ remove: true });
    }
  }
}
