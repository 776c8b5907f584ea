import { execFile } from 'node:child_process';
import { constants, openSync } from 'node:fs';
import { chmod, mkdir, open, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { packageFile } from '../../package-files.js';
import { shellWord } from '../../shell-words.js';

/**
 * What haul's action script does at one of CRIU's actions (CRTOOLS_SCRIPT_ACTION, criu/action-scripts.c).
 * An action no step names runs the inner script alone (or succeeds, without one).
 */
export interface ActionStep {
  /** Tell haul the action came, with CRTOOLS_INIT_PID (see `reached`). */
  readonly tell?: boolean;
  /**
   * Tell haul, then wait for its answer (`answer`): the action succeeds only on "ok". Without haul
   * (it closed the script, or its process is gone) the wait ends at once and the action fails.
   */
  readonly hold?: boolean;
  /**
   * What becomes of the inner script after that: 'run' it as the action's own (its status is the
   * action's), 'report' its exit status to haul as well (`innerStatus`), 'detach' it and report its
   * status once it ends, the action succeeding at once, or 'skip' it and succeed. Default 'run'.
   */
  readonly inner?: 'run' | 'report' | 'detach' | 'skip';
}

export interface ActionScriptPlan {
  /** The script CRIU was given before haul's (a container manager's), which haul's passes the actions on to. */
  readonly inner?: string;
  /** By action name: post-dump, status-ready, post-resume, ... */
  readonly steps: Readonly<Record<string, ActionStep>>;
  /**
   * Let any user enter the directory and run the script (a restore's CRIU may run it in a
   * container's context); its FIFOs stay root's alone either way.
   */
  readonly runnableByAnyone?: boolean;
}

/** The script's closing said what no longer follows; a wait for an action ends with this. */
export class ActionScriptClosedError extends Error {
  override readonly name = 'ActionScriptClosedError';
  readonly code = 'HAUL_ACTION_SCRIPT_CLOSED';
  constructor(action: string) {
    super(`CRIU did not reach its ${action} action while haul followed it`);
  }
}

const ACTION_NAME = /^[a-z][a-z-]*$/;
/** Part of Debian's perl-base, which is Essential. */
const PERL = '/usr/bin/perl';
/**
 * What a held action waits with (hold-answer.pl). Not sh's read: it opens the FIFO blocking, and
 * would wait for good for a writer once haul is gone; this opens it without waiting and fails at
 * once when no writer holds it.
 */
const HOLD_ANSWER = packageFile('src/criu/run/hold-answer.pl', import.meta.url);
/** How the script tells haul a line (tell-haul.pl): never makes a file where the FIFO has gone. */
const TELL_HAUL = packageFile('src/criu/run/tell-haul.pl', import.meta.url);

interface Waiter<T> {
  readonly promise: Promise<T>;
  resolve(value: T): void;
  reject(error: Error): void;
}

function waiter<T>(): Waiter<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<T>((ok, fail) => ((resolve = ok), (reject = fail)));
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/**
 * The one way haul talks with CRIU's action scripts: a POSIX sh script, written per CRIU run, that
 * tells haul about the actions named in its plan through a FIFO, and waits for haul's answer on a
 * second one where the plan holds an action. haul's side of both is non-blocking and read through
 * the event loop: a blocking FIFO open would hold one of libuv's four threads until CRIU got
 * there. haul holds the events FIFO open read-write, and the script writes to it without waiting
 * (tell-haul.pl), so a line to a haul that is gone is dropped, never waited on, and never leaves a
 * file behind; haul holds the answers FIFO open read-write until it closes, and the
 * script waits on it without blocking (hold-answer.pl), so the wait ends at once, in a failure,
 * when haul is no longer there to answer.
 */
export class ActionScript {
  private readonly reachedBy = new Map<string, Waiter<number>>();
  private readonly statusBy = new Map<string, Waiter<number>>();
  private readonly reachedNow = new Set<string>();
  private readonly answered = new Set<string>();
  private closed = false;

  private constructor(
    /** Give CRIU `--action-script path` (in place of the inner script). */
    readonly path: string,
    private readonly dir: string,
    private readonly events: Socket,
    private readonly answers: { readonly path: string; readonly handle: FileHandle } | undefined,
  ) {
    const lines = createInterface({ input: events });
    lines.on('error', () => {});
    events.on('error', () => {});
    lines.on('line', (line) => this.heard(line));
  }

  /** Writes the script and its FIFOs into `dir`, a directory of haul's (made 0700 unless it exists). */
  static async create(dir: string, plan: ActionScriptPlan): Promise<ActionScript> {
    for (const action of Object.keys(plan.steps)) if (!ACTION_NAME.test(action)) throw new RangeError(`not a CRIU action name: ${JSON.stringify(action)}`);
    await mkdir(dir, { recursive: true, mode: plan.runnableByAnyone ? 0o711 : 0o700 });
    const eventsPath = join(dir, 'actions.events');
    const answersPath = join(dir, 'actions.answers');
    const holds = Object.values(plan.steps).some((step) => step.hold);
    await rm(eventsPath, { force: true });
    await rm(answersPath, { force: true });
    await promisify(execFile)('mkfifo', ['-m', '0600', eventsPath, ...(holds ? [answersPath] : [])]);
    const path = join(dir, 'actions.sh');
    await writeFile(path, scriptText(plan, eventsPath, answersPath));
    await chmod(path, plan.runnableByAnyone ? 0o755 : 0o700);
    // read-write: the open waits for no writer, and the FIFO never reports an end of its own
    const answers = holds ? { path: answersPath, handle: await open(answersPath, constants.O_RDWR | constants.O_NONBLOCK) } : undefined;
    const events = new Socket({ fd: openSync(eventsPath, constants.O_RDWR | constants.O_NONBLOCK), readable: true, writable: false });
    return new ActionScript(path, dir, events, answers);
  }

  /** Resolves with CRTOOLS_INIT_PID (0 when CRIU set none) once CRIU runs `action`; rejects once closed first. */
  reached(action: string): Promise<number> {
    return this.waiterOf(this.reachedBy, action).promise;
  }

  /** The inner script's exit status at `action` (its step's inner is 'report' or 'detach'); rejects once closed first. */
  innerStatus(action: string): Promise<number> {
    return this.waiterOf(this.statusBy, action).promise;
  }

  /**
   * Answers a held action: true lets it succeed, false fails it. Before CRIU has reached it, or once
   * answered, nothing happens.
   */
  async answer(action: string, ok: boolean): Promise<void> {
    if (!this.answers || this.closed || this.answered.has(action) || !this.reachedNow.has(action)) return;
    this.answered.add(action);
    await this.answers.handle.write(ok ? 'ok\n' : 'fail\n');
  }

  /**
   * Stops following: waits not yet over reject, and a held action fails (now, or when CRIU gets to
   * it). With `remove`, the directory goes too; without, the script stays for CRIU's later actions.
   */
  async close(options: { readonly remove?: boolean } = {}): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.events.destroy();
      for (const [action, wait] of [...this.reachedBy, ...this.statusBy]) wait.reject(new ActionScriptClosedError(action));
      if (this.answers) {
        // gone by name first: a script that comes later finds no FIFO and fails, one already
        // reading sees its last writer leave
        await rm(this.answers.path, { force: true });
        await this.answers.handle.close();
      }
    }
    if (options.remove) await rm(this.dir, { recursive: true, force: true });
  }

  private waiterOf(map: Map<string, Waiter<number>>, action: string): Waiter<number> {
    let wait = map.get(action);
    if (!wait) {
      wait = waiter<number>();
      if (this.closed) wait.reject(new ActionScriptClosedError(action));
      map.set(action, wait);
    }
    return wait;
  }

  private heard(line: string): void {
    const status = /^([a-z][a-z-]*) status (\d+)$/.exec(line);
    if (status) return this.waiterOf(this.statusBy, status[1]!).resolve(Number(status[2]));
    const reached = /^([a-z][a-z-]*) (\d+)$/.exec(line);
    if (!reached) return;
    this.reachedNow.add(reached[1]!);
    this.waiterOf(this.reachedBy, reached[1]!).resolve(Number(reached[2]));
  }
}

function scriptText(plan: ActionScriptPlan, eventsPath: string, answersPath: string): string {
  const inner = plan.inner;
  const runInner = inner ? 'exec "$inner"' : 'exit 0';
  const cases = Object.entries(plan.steps).map(([action, step]) => {
    const lines: string[] = [];
    if (step.hold) lines.push('hold');
    else if (step.tell) lines.push('tell');
    const then = inner ? (step.inner ?? 'run') : 'skip';
    if (then === 'run') lines.push(runInner);
    if (then === 'report') lines.push('"$inner"', 'status=$?', 'say "$CRTOOLS_SCRIPT_ACTION status $status"', 'exit "$status"');
    if (then === 'detach') {
      // its own session, its output nowhere: CRIU goes on at once, and does not wait for it
      lines.push(`setsid -f /bin/sh -c '"$1"; ${PERL} "$2" "$3" "$4 status $?"' sh "$inner" ${shellWord(TELL_HAUL)} "$events" "$CRTOOLS_SCRIPT_ACTION" </dev/null >/dev/null 2>&1`, 'exit 0');
    }
    if (then === 'skip') lines.push('exit 0');
    return `  ${action})\n${lines.map((line) => `    ${line}`).join('\n')} ;;`;
  });
  return `#!/bin/sh
# written by haul for one CRIU run (src/criu/run/action-script.ts)
events=${shellWord(eventsPath)}
answers=${shellWord(answersPath)}
inner=${shellWord(inner ?? '')}
say() { ${PERL} ${shellWord(TELL_HAUL)} "$events" "$1"; }
tell() { say "$CRTOOLS_SCRIPT_ACTION \${CRTOOLS_INIT_PID:-0}"; }
hold() {
  tell || exit 1
  ${PERL} ${shellWord(HOLD_ANSWER)} "$answers" || exit 1
}
case "$CRTOOLS_SCRIPT_ACTION" in
${cases.join('\n')}
  *)
    ${runInner} ;;
esac
`;
}
