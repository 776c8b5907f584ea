import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { CriuError, startCriu } from '../../src/criu/run/criu-process.js';
import { ActionScript, ActionScriptClosedError, type ActionScriptPlan } from '../../src/criu/run/action-script.js';
import { describeOnHost } from '../support/host.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { REPO } from '../support/paths.js';
import { scratchDir } from '../support/scratch.js';
import { realtimeNs } from '../support/workload.js';

const HOLD_POST_DUMP: ActionScriptPlan = { steps: { 'post-dump': { hold: true } } };

const state = (pid: number): string => /^State:\s+(\S)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '?';

describeOnHost('holding the source at post-dump until the destination answers', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();

  it('gives the frozen source back, same process and memory, when haul answers "fail"', async () => {
    const { source, destination: hookDir, workload, defer, expectContinued } = await scenes.start('gate-fail', 16);
    const gate = await ActionScript.create(hookDir, HOLD_POST_DUMP);
    defer(() => void gate.close());
    const frozenAt = realtimeNs();
    const dump = startCriu('dump', ['-t', String(workload.pid), '-D', source, '--action-script', gate.path], { logFile: `${source}/dump.log` });
    await gate.reached('post-dump');
    // every image is written and the source is frozen, waiting for the verdict
    expect(readFileSync(`${source}/inventory.img`).length).toBeGreaterThan(0);
    await sleep(200);
    expect(state(workload.pid)).toMatch(/[tT]/);
    await gate.answer('post-dump', false);
    await expect(dump.exited).rejects.toBeInstanceOf(CriuError);
    // the same process goes on, never restored, with every page
    await expectContinued(frozenAt);
  });

  it('lets the dump end the source when haul answers "ok"', async () => {
    const { source, destination: hookDir, workload, defer } = await scenes.start('gate-ok', 16);
    const gate = await ActionScript.create(hookDir, HOLD_POST_DUMP);
    defer(() => void gate.close());
    const dump = startCriu('dump', ['-t', String(workload.pid), '-D', source, '--action-script', gate.path], { logFile: `${source}/dump.log` });
    await gate.reached('post-dump');
    await gate.answer('post-dump', true);
    await dump.exited;
    await workload.exited;
  });

  it('does not wait forever when CRIU fails before post-dump', async () => {
    const { source, destination: hookDir, defer } = await scenes.start('gate-early', 1);
    const gate = await ActionScript.create(hookDir, HOLD_POST_DUMP);
    defer(() => void gate.close());
    const dump = startCriu('dump', ['-t', '999999', '-D', source, '--action-script', gate.path], { logFile: `${source}/dump.log` });
    await expect(dump.exited).rejects.toBeInstanceOf(CriuError);
    await gate.close();
    await expect(gate.reached('post-dump')).rejects.toBeInstanceOf(ActionScriptClosedError);
  });
});

describe('the action script haul writes', () => {
  it("answers CRIU from a work dir whose path holds a single quote, a space and a $", async () => {
    const scratch = scratchDir('gate-quote');
    const dir = join(scratch.path, "it's a $dir");
    mkdirSync(dir);
    try {
      const gate = await ActionScript.create(dir, HOLD_POST_DUMP);
      // CRIU runs its action script with the action in the environment (criu/action-scripts.c)
      const script = spawn('/bin/sh', [gate.path], { env: { ...process.env, CRTOOLS_SCRIPT_ACTION: 'post-dump' }, stdio: 'ignore' });
      const exited = new Promise<number | null>((resolve) => script.once('exit', resolve));
      await Promise.race([gate.reached('post-dump'), exited.then((code) => Promise.reject(new Error(`the script ended (${code}) before reaching haul`)))]);
      await gate.answer('post-dump', true);
      expect(await exited).toBe(0);
    } finally {
      scratch.remove();
    }
  });

  /** Runs the script as CRIU would at `action`; resolves with its exit status. */
  function run(script: ActionScript, action: string, env: Record<string, string> = {}): Promise<number | null> {
    const child = spawn('/bin/sh', [script.path], { env: { ...process.env, CRTOOLS_SCRIPT_ACTION: action, ...env }, stdio: 'ignore' });
    return new Promise((resolve) => child.once('exit', resolve));
  }

  function innerScript(dir: string, status: number): string {
    const path = join(dir, 'inner.sh');
    writeFileSync(path, `#!/bin/sh\necho "$CRTOOLS_SCRIPT_ACTION" >> ${JSON.stringify(join(dir, 'inner.log'))}\nexit ${status}\n`);
    chmodSync(path, 0o700);
    return path;
  }

  it('fails a held action when haul is gone, at once, before or during the wait', async () => {
    const scratch = scratchDir('actions-gone');
    try {
      const before = await ActionScript.create(join(scratch.path, 'before'), HOLD_POST_DUMP);
      await before.close();
      expect(await run(before, 'post-dump')).toBe(1);
      const during = await ActionScript.create(join(scratch.path, 'during'), HOLD_POST_DUMP);
      const exited = run(during, 'post-dump');
      await during.reached('post-dump');
      await during.close();
      expect(await exited).toBe(1);
    } finally {
      scratch.remove();
    }
  });

  it('fails a held action at once when the haul process that made the script is gone, FIFOs left behind', async () => {
    const scratch = scratchDir('actions-killed');
    try {
      // a haul of its own, killed before CRIU gets to the action: nothing removes its FIFOs
      const dir = join(scratch.path, 'actions');
      const program = `
        const { ActionScript } = await import(${JSON.stringify(join(REPO, 'dist/src/criu/run/action-script.js'))});
        const script = await ActionScript.create(${JSON.stringify(dir)}, { steps: { 'post-dump': { hold: true } } });
        console.log(script.path);
        setInterval(() => {}, 1000);
      `;
      const haul = spawn(process.execPath, ['--input-type=module', '-e', program], { stdio: ['ignore', 'pipe', 'inherit'] });
      const [path] = (await once(createInterface({ input: haul.stdout! }), 'line')) as [string];
      haul.kill('SIGKILL');
      await once(haul, 'exit');
      const started = Date.now();
      const script = spawn('/bin/sh', [path], { env: { ...process.env, CRTOOLS_SCRIPT_ACTION: 'post-dump' }, stdio: 'ignore' });
      const [code] = (await once(script, 'exit')) as [number];
      expect(code).toBe(1);
      // at once: waiting for a haul that is gone would be for good (a busy machine's sh and perl
      // take a second or two to start)
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      scratch.remove();
    }
  });

  it('tells haul the init pid CRIU gives an action, and passes every action to the inner script', async () => {
    const scratch = scratchDir('actions-tell');
    try {
      const inner = innerScript(scratch.path, 3);
      const script = await ActionScript.create(join(scratch.path, 'actions'), { inner, steps: { 'post-resume': { tell: true } } });
      expect(await run(script, 'post-resume', { CRTOOLS_INIT_PID: '4242' })).toBe(3);
      expect(await script.reached('post-resume')).toBe(4242);
      expect(await run(script, 'network-unlock')).toBe(3);
      expect(readFileSync(join(scratch.path, 'inner.log'), 'utf8')).toBe('post-resume\nnetwork-unlock\n');
      await script.close({ remove: true });
    } finally {
      scratch.remove();
    }
  });

  it("reports the inner script's status, run in line or detached", async () => {
    const scratch = scratchDir('actions-status');
    try {
      const inner = innerScript(scratch.path, 7);
      const inLine = await ActionScript.create(join(scratch.path, 'in-line'), { inner, steps: { 'post-dump': { inner: 'report' } } });
      expect(await run(inLine, 'post-dump')).toBe(7);
      expect(await inLine.innerStatus('post-dump')).toBe(7);
      await inLine.close();
      const detached = await ActionScript.create(join(scratch.path, 'detached'), { inner, steps: { 'post-dump': { hold: true, inner: 'detach' } } });
      const exited = run(detached, 'post-dump');
      await detached.reached('post-dump');
      await detached.answer('post-dump', true);
      expect(await exited).toBe(0);
      expect(await detached.innerStatus('post-dump')).toBe(7);
      await detached.close();
    } finally {
      scratch.remove();
    }
  });

  it('leaves nothing behind when a detached step ends after haul closed and removed its directory', async () => {
    const scratch = scratchDir('actions-late');
    try {
      // the step ends only once the test says so, and says when it has told haul (outside `dir`)
      const go = join(scratch.path, 'go');
      const done = join(scratch.path, 'done');
      const inner = join(scratch.path, 'slow-inner.sh');
      writeFileSync(inner, `#!/bin/sh\nwhile [ ! -e ${go} ]; do sleep 0.05; done\nexit 0\n`, { mode: 0o755 });
      const dir = join(scratch.path, 'actions');
      const script = await ActionScript.create(dir, { inner, steps: { 'post-dump': { inner: 'detach' } } });
      // what the detached step runs after the inner script: its report, then the marker
      writeFileSync(script.path, readFileSync(script.path, 'utf8').replace(/"\$4 status \$\?"'/, `"$4 status $?"; touch ${done}'`));
      expect(await run(script, 'post-dump')).toBe(0);
      await script.close({ remove: true });
      mkdirSync(dir); // made again, as the next run's would be
      writeFileSync(go, '');
      await expect.poll(() => existsSync(done), { timeout: 10_000 }).toBe(true);
      expect(readdirSync(dir)).toEqual([]);
    } finally {
      scratch.remove();
    }
  });
});
