import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { afterEach, expect, it } from 'vitest';
import { restoreCaller } from '../../plugin/restore-caller.js';
import { describeOnHost } from '../support/host.js';
import { scratchDir } from '../support/scratch.js';

describeOnHost('which instance a restore is of', ['root'], () => {
  const started: ChildProcess[] = [];
  afterEach(() => started.splice(0).forEach((child) => child.kill('SIGKILL')));

  /** A process run as `python3 forkmigrate NAME LXCPATH CONFIG` (argv as Incus' own), and the child it starts. */
  async function standIn(name: string): Promise<{ parent: number; child: number }> {
    const scratch = scratchDir('restore-caller');
    writeFileSync(`${scratch.path}/forkmigrate`, 'import subprocess, sys\nchild = subprocess.Popen(["sleep", "60"])\nprint(child.pid, flush=True)\nchild.wait()\n');
    const parent = spawn('python3', ['forkmigrate', name, '/var/lib/incus/containers', `/run/incus/${name}/lxc.conf`], { cwd: scratch.path, stdio: ['ignore', 'pipe', 'inherit'] });
    started.push(parent);
    const [line] = (await once(parent.stdout!, 'data')) as [Buffer];
    const child = Number(line.toString().trim());
    parent.once('exit', () => {
      scratch.remove();
      try {
        process.kill(child, 'SIGKILL');
      } catch {
        // gone already
      }
    });
    return { parent: parent.pid!, child };
  }

  it("takes the name from the restore's parent only when that parent runs incusd's own binary", async () => {
    const { parent, child } = await standIn('victim');
    // the "incusd" here is the stand-in itself: same binary as the parent
    expect(await restoreCaller(child, parent)).toEqual({ instance: 'victim', lxcConfigPath: '/run/incus/victim/lxc.conf' });
    // any other binary, with the same arguments, names nothing
    expect(await restoreCaller(child, process.pid)).toBeUndefined();
  });

  it('names nothing for a restore whose parent is not forkmigrate, or that is gone', async () => {
    const { parent } = await standIn('victim');
    expect(await restoreCaller(parent, process.pid)).toBeUndefined(); // its parent: this test
    expect(await restoreCaller(2 ** 22 + 1, process.pid)).toBeUndefined();
  });
});
