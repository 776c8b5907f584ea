import { execFile, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO } from './paths.js';
import { parseReport, reportArgs, type WorkloadReport } from './workload.js';

/** The incus client configuration that `scripts/testbed up` writes: remotes src and dst. */
export const INCUS_CONF = '/var/lib/haul-testbed/client';
export type TestHost = 'src' | 'dst';
const otherHost = (host: TestHost): TestHost => (host === 'src' ? 'dst' : 'src');
/** How long a delete may take before the host's incusd is taken to hold a leaked lock. */
const DELETE_MS = 30_000;

/**
 * Runs the incus client against the test bed; fails with incus's own error text. Its stdin is
 * /dev/null: `incus launch` reads a config from a stdin that is not a terminal, and would wait.
 */
export async function incus(args: readonly string[], timeoutMs = 120_000): Promise<string> {
  const child = spawn('incus', [...args], { env: { ...process.env, INCUS_CONF }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', resolve);
  }).finally(() => clearTimeout(timer));
  if (code !== 0) {
    const why = code === null ? `killed after ${timeoutMs / 1000} s` : stderr.trim() || `exit code ${code}`;
    throw new Error(`incus ${args.join(' ')}: ${why}`);
  }
  return stdout;
}

/**
 * CRIU 4.1.1 opens timens-N.img in the restored root task before its parent has written the new user
 * namespace's uid map (criu/cr-restore.c: prepare_timens() comes before the PREPARE_NAMESPACES stage).
 * When the child wins that race it cannot search Incus's restore directory (0700, owned by the
 * container's root) and the restore fails. Seen here in about one native move in six.
 */
const TIMENS_RACE = /Unable to open timens-\d+\.img: Permission denied/;

/**
 * On a btrfs pool Incus sends the root filesystem once, from a snapshot taken before the dump, and
 * never again (docs/incus-native-move.md): a file the container opened after the snapshot
 * is missing at the restore, which then fails (haul's moves carry such files; native ones cannot).
 */
const FILE_LOST = /Can't open file .* on restore: No such file or directory/;

/**
 * A native move that failed in one of the ways native Incus + CRIU 4.1.1 are known to fail here:
 * - 'timens-race': the restore failed (see TIMENS_RACE); Incus resumes the container on the source.
 * - 'file-lost': the restore failed on a file written after Incus' snapshot (see FILE_LOST); Incus
 *   resumes the container on the source.
 * - 'false-success': the restore failed but the destination reported success (Incus 6.0.4's
 *   MigrateReceive race): the source is deleted and the container sits STOPPED on the destination,
 *   its running state lost.
 * Either way Incus then holds a leaked "stop" operation lock for that name on the destination until it
 * restarts, so the name cannot be moved there again.
 */
export class NativeMoveDefect extends Error {
  constructor(
    readonly kind: 'timens-race' | 'file-lost' | 'false-success',
    readonly container: string,
    readonly from: TestHost,
    readonly to: TestHost,
    detail: string,
  ) {
    super(`native move of ${container} ${from} -> ${to} hit a known defect (${kind}): ${detail}`);
  }
}

/** A container on the test bed, addressed through whichever host it is on now. */
export class TestContainer {
  private constructor(
    readonly name: string,
    public host: TestHost,
  ) {}

  get ref(): string {
    return `${this.host}:${this.name}`;
  }

  /** Launches IMAGE on HOST under a fresh name and waits until READYFILE exists inside it. */
  static async launch(image: string, host: TestHost, readyFile: string, launchArgs: readonly string[] = []): Promise<TestContainer> {
    const container = new TestContainer(`haul-${image}-${randomBytes(3).toString('hex')}`, host);
    await incus(['launch', image, container.ref, '--quiet', ...launchArgs]);
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        await container.exec(['test', '-s', readyFile]);
        return container;
      } catch (error) {
        if (Date.now() > deadline) throw new Error(`${container.ref}: ${readyFile} missing after 30 s: ${String(error)}`);
        await sleep(100);
      }
    }
  }

  async exec(command: readonly string[]): Promise<string> {
    return incus(['exec', this.ref, '--', ...command]);
  }

  /**
   * The counter's value. Its loop rewrites the file in place (`echo $i > /tmp/counter`: truncated,
   * then written), so a read between the two finds it empty; right after a lazy restore the
   * writer can fault on a page between them, and the window is not microseconds any more. An
   * empty read is no value: read again.
   */
  async readCounter(path = '/tmp/counter'): Promise<number> {
    for (let attempt = 0; ; attempt++) {
      const text = (await this.exec(['cat', path])).trim();
      if (text !== '' || attempt >= 20) return Number(text);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  async workloadReport(dir: string, sinceNs?: bigint): Promise<WorkloadReport> {
    return parseReport(await this.exec(['haul-workload', ...reportArgs(dir, sinceNs)]));
  }

  /** Which hosts list this container, and in which state. */
  async whereabouts(): Promise<Record<TestHost, string | undefined>> {
    const stateOn = async (host: TestHost): Promise<string | undefined> => {
      const rows = await incus(['list', `${host}:`, '--format', 'csv', '--columns', 'ns']);
      const row = rows.split('\n').find((line) => line.startsWith(`${this.name},`));
      return row?.split(',')[1];
    };
    return { src: await stateOn('src'), dst: await stateOn('dst') };
  }

  /**
   * Native `incus move` to the other host; returns the wall time of the client command in seconds.
   * Throws NativeMoveDefect when the move hit one of the native path's known defects.
   */
  async moveTo(target: TestHost): Promise<number> {
    const source = this.host;
    const started = process.hrtime.bigint();
    const startedAt = Date.now();
    try {
      await incus(['move', this.ref, `${target}:`, '--quiet'], 300_000);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (TIMENS_RACE.test(message)) throw new NativeMoveDefect('timens-race', this.name, source, target, message);
      // Incus does not always pass the restore's error on: it may report the source it could not
      // delete (still running, since the restore failed), so the restore's own log is read too
      const restoreLog = this.restoreLogSince(target, startedAt);
      if (TIMENS_RACE.test(restoreLog)) throw new NativeMoveDefect('timens-race', this.name, source, target, `${message}; the restore's log on ${target} says: ${TIMENS_RACE.exec(restoreLog)![0]}`);
      if (FILE_LOST.test(message)) throw new NativeMoveDefect('file-lost', this.name, source, target, message);
      throw error;
    }
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    this.host = target;
    const where = await this.whereabouts();
    if (where[target] === 'STOPPED' && where[source] === undefined) {
      throw new NativeMoveDefect('false-success', this.name, source, target, `${this.name} is STOPPED on ${target} and gone from ${source}`);
    }
    return seconds;
  }

  /** What the restores Incus ran for this container on `host` since `since` (ms) logged. */
  private restoreLogSince(host: TestHost, since: number): string {
    const dir = `/var/lib/haul-testbed/${host}/incus/logs/${this.name}`;
    const names = existsSync(dir) ? readdirSync(dir).filter((name) => name.startsWith('migration_restore_')) : [];
    return names
      .map((name) => join(dir, name))
      .filter((path) => statSync(path).mtimeMs >= since)
      .map((path) => readFileSync(path, 'utf8'))
      .join('\n');
  }

  /**
   * Deletes the container wherever it is. A native move that hit a NativeMoveDefect leaves Incus
   * holding a lock on the name that makes a delete wait for good: when one does not end in time,
   * that host's incusd is restarted (its other containers run on) and the delete tried again.
   */
  async delete(): Promise<void> {
    for (const host of [this.host, otherHost(this.host)]) {
      const ref = `${host}:${this.name}`;
      if (await incus(['delete', '--force', ref], DELETE_MS).then(() => true, () => false)) continue;
      if (!(await incus(['list', `${host}:`, '--format', 'csv', '--columns', 'n'], DELETE_MS).catch(() => '')).split('\n').includes(this.name)) continue;
      await promisify(execFile)(`${REPO}/scripts/testbed`, ['restart-incusd', host], { maxBuffer: 16 * 1024 * 1024 });
      await incus(['delete', '--force', ref], DELETE_MS).catch(() => undefined);
    }
  }
}

/** How long a test file's cleanup may take: each delete may wait out a leaked lock and a restart of incusd. */
export const CLEANUP_MS = 600_000;

/** Deletes the containers one after another (a restart of incusd that one needs must not meet another's). */
export async function deleteAll(containers: readonly TestContainer[]): Promise<void> {
  for (const container of containers) await container.delete();
}

/** The pid of a test host's haul agent, from the file `scripts/testbed up` keeps. */
export function agentPid(host: TestHost): number {
  return Number(readFileSync(`/var/lib/haul-testbed/${host}/haul/agent.pid`, 'utf8').trim());
}

/** Ends a test host's haul agent the hard way (SIGKILL: no goodbye, its socket file left behind). */
export async function killAgent(host: TestHost): Promise<void> {
  const pid = agentPid(host);
  process.kill(pid, 'SIGKILL');
  while (existsSync(`/proc/${pid}`)) await sleep(50);
}

/** Starts whatever agent of the test bed is not running (scripts/testbed up is idempotent). */
export async function startAgents(): Promise<void> {
  await promisify(execFile)(`${REPO}/scripts/testbed`, ['up'], { maxBuffer: 16 * 1024 * 1024 });
}
