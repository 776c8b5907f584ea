import { ActionScript } from '../src/criu/index.js';

/**
 * The action script haul gives a pre-copy dump in place of Incus' own: every action runs Incus'
 * script as before, and haul hears the exit status of Incus' post-dump step (which waits for the
 * destination's restore), so the source's record says what Incus concluded beside what haul's
 * destination saw. The answer stands either way: Incus 6.0.4's source treats a dump that fails
 * after a restore it was told succeeded as a success (driver_lxc.go logs "Dump failed after
 * successful restore"), and incus move then deletes the source, so failing post-dump could not
 * save it.
 */
export class ObservedPostDump {
  private constructor(private readonly script: ActionScript) {}

  static async create(dir: string, incusScript: string): Promise<ObservedPostDump> {
    return new ObservedPostDump(await ActionScript.create(dir, { inner: incusScript, steps: { 'post-dump': { inner: 'report' } } }));
  }

  get scriptPath(): string {
    return this.script.path;
  }

  /** The exit status of Incus' own post-dump step (0: Incus says it restored); waits for it. */
  incusPostDump(): Promise<number> {
    return this.script.innerStatus('post-dump');
  }

  /** Stops waiting; the script stays for CRIU's later actions (the source role sweeps old ones). */
  close(): void {
    void this.script.close().catch(() => {});
  }
}
