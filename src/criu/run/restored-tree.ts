import { readdir, readFile } from 'node:fs/promises';

/**
 * A process tree `criu restore -d --pidfile` left behind, by its root's pid. The destination either
 * lets it run (the source confirmed it ended its copy) or ends it (the source did not, so the source
 * resumed): at no time may both copies run.
 */
export class RestoredTree {
  private constructor(readonly pid: number) {}

  /** The tree under `pid`, as CRIU reported its root (CRTOOLS_INIT_PID). */
  static ofRoot(pid: number): RestoredTree {
    if (!Number.isInteger(pid) || pid < 1) throw new Error(`not a process id: ${pid}`);
    return new RestoredTree(pid);
  }

  static async fromPidFile(path: string): Promise<RestoredTree> {
    const text = (await readFile(path, 'utf8')).trim();
    const pid = Number(text);
    if (!Number.isInteger(pid) || pid < 1) throw new Error(`${path} does not hold a process id: ${JSON.stringify(text)}`);
    return new RestoredTree(pid);
  }

  /** Every process of the tree, root first, as found now in /proc. */
  async members(): Promise<number[]> {
    const found: number[] = [];
    const pending = [this.pid];
    while (pending.length > 0) {
      const pid = pending.shift()!;
      let tasks: string[];
      try {
        tasks = await readdir(`/proc/${pid}/task`);
      } catch {
        continue; // gone meanwhile
      }
      found.push(pid);
      for (const task of tasks) {
        const children = await readFile(`/proc/${pid}/task/${task}/children`, 'utf8').catch(() => '');
        for (const child of children.split(' ').filter(Boolean)) pending.push(Number(child));
      }
    }
    return found;
  }

  /** Stops every process of the tree (SIGSTOP) until resume(). */
  async pause(): Promise<void> {
    for (const pid of await this.members()) signal(pid, 'SIGSTOP');
  }

  /** Lets a tree restored with --leave-stopped, or paused, run. */
  async resume(): Promise<void> {
    for (const pid of await this.members()) signal(pid, 'SIGCONT');
  }

  /** Ends the whole tree; stopped first, so that none forks or escapes by re-parenting meanwhile. */
  async kill(): Promise<void> {
    const members = await this.members();
    for (const pid of members) signal(pid, 'SIGSTOP');
    for (const pid of await this.members()) signal(pid, 'SIGKILL');
    for (const pid of members) signal(pid, 'SIGKILL');
  }
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}
