import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { CriuError, startCriu } from '../../src/criu/run/criu-process.js';
import { PostDumpGate } from '../../src/criu/run/post-dump-gate.js';
import { describeOnHost } from '../support/host.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { scratchDir } from '../support/scratch.js';
import { realtimeNs } from '../support/workload.js';

const state = (pid: number): string => /^State:\s+(\S)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '?';

describeOnHost('holding the source at post-dump until the destination answers', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();

  it('gives the frozen source back, same process and memory, when haul answers "fail"', async () => {
    const { source, destination: hookDir, workload, defer, expectContinued } = await scenes.start('gate-fail', 16);
    const gate = await PostDumpGate.create(hookDir);
    defer(() => void gate.close());
    const frozenAt = realtimeNs();
    const dump = startCriu('dump', ['-t', String(workload.pid), '-D', source, '--action-script', gate.scriptPath], { logFile: `${source}/dump.log` });
    await gate.reached;
    // every image is written and the source is frozen, waiting for the verdict
    expect(readFileSync(`${source}/inventory.img`).length).toBeGreaterThan(0);
    await sleep(200);
    expect(state(workload.pid)).toMatch(/[tT]/);
    await gate.release(false);
    await expect(dump.exited).rejects.toBeInstanceOf(CriuError);
    // the same process goes on, never restored, with every page
    await expectContinued(frozenAt);
  });

  it('lets the dump end the source when haul answers "ok"', async () => {
    const { source, destination: hookDir, workload, defer } = await scenes.start('gate-ok', 16);
    const gate = await PostDumpGate.create(hookDir);
    defer(() => void gate.close());
    const dump = startCriu('dump', ['-t', String(workload.pid), '-D', source, '--action-script', gate.scriptPath], { logFile: `${source}/dump.log` });
    await gate.reached;
    await gate.release(true);
    await dump.exited;
    await workload.exited;
  });

  it('does not wait forever when CRIU fails before post-dump', async () => {
    const { source, destination: hookDir, defer } = await scenes.start('gate-early', 1);
    const gate = await PostDumpGate.create(hookDir);
    defer(() => void gate.close());
    const dump = startCriu('dump', ['-t', '999999', '-D', source, '--action-script', gate.scriptPath], { logFile: `${source}/dump.log` });
    await expect(dump.exited).rejects.toBeInstanceOf(CriuError);
    await gate.close();
    await expect(gate.reached).rejects.toThrow(/did not reach post-dump/);
  });
});

describe('the post-dump script haul writes', () => {
  it("answers CRIU from a work dir whose path holds a single quote, a space and a $", async () => {
    const scratch = scratchDir('gate-quote');
    const dir = join(scratch.path, "it's a $dir");
    mkdirSync(dir);
    try {
      const gate = await PostDumpGate.create(dir);
      // CRIU runs its action script with the action in the environment (criu/action-scripts.c)
      const script = spawn('/bin/sh', [gate.scriptPath], { env: { ...process.env, CRTOOLS_SCRIPT_ACTION: 'post-dump' }, stdio: 'ignore' });
      const exited = new Promise<number | null>((resolve) => script.once('exit', resolve));
      await Promise.race([gate.reached, exited.then((code) => Promise.reject(new Error(`the script ended (${code}) before reaching haul`)))]);
      await gate.release(true);
      expect(await exited).toBe(0);
    } finally {
      scratch.remove();
    }
  });
});
