import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants, lstatSync, openSync, unlinkSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import type { ProcessIdentity } from '../src/host/index.js';
import { packageFile } from '../src/package-files.js';

/** What the gatekeeper does by itself when the agent leaves it without a word. */
export interface GateContainment {
  /** The restore's CRIU: killed if it still runs. */
  readonly criu?: ProcessIdentity;
  /** `ss` filters (`dst A and src B`) of incusd's connections to the source's incusd: cut. */
  readonly cutFilters: readonly string[];
}

/** Part of Debian's perl-base, which is Essential. */
const PERL = '/usr/bin/perl';
/** How long the gate waits for its word before the agent is taken to be gone. */
const READY_MS = 10_000;

/**
 * The gatekeeper (restore-log-keeper.pl beside this file), a detached perl process (it must outlive the agent). Arguments: the gate's path
 * (where incusd reads CRIU's restore log), the log CRIU really writes, the longest wait in
 * seconds, the restore's CRIU (pid and start time, 0 0 for none), then `ss` filters for incusd's
 * connections to the source's incusd. It makes the gate a FIFO it holds open, says `ready`, and
 * waits for the word `release` on stdin, or its end (the agent is gone), or the longest wait. Left
 * without that word, and unless the agent said `restored` (the restore succeeded), it contains the
 * restore as the agent would have: it kills that CRIU with what it made and cuts those connections, so that Incus
 * fails the move rather than report a failed restore as a success. Then it puts a copy of the log
 * in the FIFO's place (later opens read the file) and writes the log into the FIFO for whoever
 * opened it meanwhile, giving up after 30 s without a reader. The gate sits in Incus' restore dir,
 * which the source's rsync filled: every name it writes there is unlinked first and made anew
 * (mkfifo, and sysopen with O_CREAT | O_EXCL | O_NOFOLLOW), so that a link planted there is never
 * written through.
 */
const GATEKEEPER = packageFile('plugin/restore-log-keeper.pl', import.meta.url);

/**
 * Holds back incusd's reading of CRIU's restore log until haul lets it go. Incus 6.0.4 reads that
 * log (collectCRIULogFile, then getCRIULogErrors in driver_lxc.go's migrate) after CRIU has ended
 * and before it reports the restore; and its MigrateReceive can report a failed restore as a
 * success when nothing has cancelled the migration by then (the state goroutine closes
 * stateTransferDone before its errgroup cancels the context), after which `incus move` deletes the
 * source. So CRIU writes its log into haul's directory, the name Incus reads is a FIFO, and what
 * reads it waits until haul has had the migration cancelled. The gatekeeper is a process of its
 * own: if the agent dies, it lets go at once, and no incusd waits on a dead agent.
 */
export class RestoreLogGate {
  private released = false;
  private pending = false;

  private constructor(private readonly keeper: ChildProcess) {}

  /**
   * Makes `gatePath` the gate for the log CRIU writes at `logPath`; lets go after `maxWaitMs` in any
   * case. `containment`: what the keeper does itself when it is left without the agent's word (the
   * agent died, or never answered): kill the restore's CRIU, and cut incusd's connections (`ss`
   * filters, connectionFilters) to the source's incusd.
   */
  static async open(gatePath: string, logPath: string, maxWaitMs: number, containment: GateContainment = { cutFilters: [] }): Promise<RestoreLogGate> {
    const criu = containment.criu ? [String(containment.criu.pid), containment.criu.startTime] : ['0', '0'];
    const keeper = spawn(PERL, [GATEKEEPER, gatePath, logPath, String(Math.ceil(maxWaitMs / 1000)), ...criu, ...containment.cutFilters], { detached: true, stdio: ['pipe', 'pipe', 'ignore'] });
    keeper.stdin!.on('error', () => {});
    const lines = createInterface({ input: keeper.stdout! });
    try {
      const first = await new Promise<string>((resolve, reject) => {
        const late = setTimeout(() => reject(new Error(`the restore log's gatekeeper did not start within ${READY_MS / 1000} s`)), READY_MS);
        lines.once('line', (line) => (clearTimeout(late), resolve(line)));
        keeper.once('error', (error) => (clearTimeout(late), reject(error)));
        keeper.once('exit', (code) => (clearTimeout(late), reject(new Error(`the restore log's gatekeeper ended (${code}) before it was ready`))));
      });
      if (first !== 'ready') throw new Error(`the restore log's gatekeeper: ${first.replace(/^error /, '')}`);
    } catch (error) {
      keeper.kill('SIGKILL');
      unblock(gatePath);
      throw error;
    } finally {
      lines.close();
      keeper.stdout!.destroy();
    }
    // it must outlive a shortage of memory: killed, it would leave readers of the FIFO waiting
    try {
      writeFileSync(`/proc/${keeper.pid}/oom_score_adj`, '-1000');
    } catch {
      // not root: the kernel's default
    }
    // killed all the same (by hand): whoever waits at the gate must not wait for good
    keeper.once('exit', (_code, signal) => signal !== null && unblock(gatePath));
    keeper.unref();
    (keeper.stdin as unknown as { unref(): void }).unref(); // the agent's end of it, open until release
    return new RestoreLogGate(keeper);
  }

  /** The restore succeeded: whatever happens to the agent now, the keeper only lets go. */
  restored(): void {
    if (!this.released) this.keeper.stdin!.write('restored\n');
  }

  /** Lets incusd read the log (idempotent). */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.keeper.stdin!.end('release\n');
  }

  /** Leaves the gate to the keeper without a word: it contains the restore (see open), then lets go. */
  abandon(): void {
    if (this.released) return;
    this.released = true;
    this.keeper.stdin!.end();
  }

  /** Lets incusd read the log once `done` settles; `abandonUnlessPending` then leaves it to that. */
  releaseWhen(done: Promise<unknown>): void {
    this.pending = true;
    void done.finally(() => this.release()).catch(() => {});
  }

  /** After an error on the agent's way: incusd must not wait for good, nor go on uncontained. */
  abandonUnlessPending(): void {
    if (!this.pending) this.abandon();
  }
}

/**
 * Takes away a gate whose keeper is gone: a reader waiting to open it gets an empty log (opening the
 * write end lets it through, closing it ends its read), and the name goes, so no later open waits.
 */
function unblock(gatePath: string): void {
  try {
    if (!lstatSync(gatePath).isFIFO()) return;
  } catch {
    return;
  }
  let writer: number | undefined;
  try {
    writer = openSync(gatePath, constants.O_WRONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
  } catch {
    // ENXIO: nobody is waiting to read
  }
  try {
    unlinkSync(gatePath);
  } catch {
    // gone already
  }
  if (writer !== undefined) closeSync(writer);
}
