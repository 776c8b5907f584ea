import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { installHook, uninstallHook } from '../../plugin/criu-hook.js';
import { DUMP_ANSWER_MS, RESTORE_ANSWER_MS, hookReplyText, type HookReply, type HookRequest } from '../../plugin/hook-protocol.js';

import { scratchDir } from '../support/scratch.js';

/**
 * The hook liblxc runs as `criu`, against a stand-in for the real CRIU that prints its arguments (one
 * per line) and a stand-in agent on the hook socket.
 */
function setUp(): { dir: string; incusDir: string; realCriu: string; remove(): void } {
  const scratch = scratchDir('hook');
  const incusDir = `${scratch.path}/incus`;
  mkdirSync(incusDir);
  const realCriu = `${scratch.path}/real-criu`;
  writeFileSync(realCriu, '#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n', { mode: 0o755 });
  return { dir: scratch.path, incusDir, realCriu, remove: scratch.remove };
}

async function runHook(hook: string, incusDir: string, args: string[]): Promise<{ code: number; lines: string[]; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(hook, args, { env: { PATH: '/usr/bin:/bin', INCUS_DIR: incusDir } });
    return { code: 0, lines: stdout.split('\n').filter(Boolean), stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, lines: failed.stdout.split('\n').filter(Boolean), stderr: failed.stderr };
  }
}

function fakeAgent(incusDir: string, answer: (request: HookRequest) => HookReply): Promise<Server> {
  const server = createServer((socket) => {
    createInterface({ input: socket }).once('line', (line) => socket.end(hookReplyText(answer(JSON.parse(line) as HookRequest))));
  });
  return new Promise((resolve) => server.listen(`${incusDir}/haul-agent.sock`, () => resolve(server)));
}

describe('the CRIU hook that haul agent install puts first on incusd\'s PATH', () => {
  const cleanups: Array<() => void> = [];
  afterEach(() => cleanups.splice(0).reverse().forEach((cleanup) => cleanup()));

  it('passes every call but the final dump and the restore straight to the real CRIU, printing nothing of its own', async () => {
    const { dir, incusDir, realCriu, remove } = setUp();
    cleanups.push(remove);
    const hook = await installHook(`${dir}/hook`, realCriu);
    const asked: HookRequest[] = [];
    const agent = await fakeAgent(incusDir, (request) => (asked.push(request), { args: ['never'] }));
    cleanups.push(() => agent.close());
    expect(await runHook(hook, incusDir, ['--version'])).toMatchObject({ code: 0, lines: ['--version'] });
    expect(await runHook(hook, incusDir, ['check', '--feature', 'mem_dirty_track'])).toMatchObject({ code: 0, lines: ['check', '--feature', 'mem_dirty_track'] });
    expect(asked).toEqual([]);
  });

  it('runs CRIU with the arguments the agent gives for a dump, quoting included', async () => {
    const { dir, incusDir, realCriu, remove } = setUp();
    cleanups.push(remove);
    const hook = await installHook(`${dir}/hook`, realCriu);
    const agent = await fakeAgent(incusDir, (request) => ({ args: [...request.args, '--page-server', "it's a \"port\" $HOME"] }));
    cleanups.push(() => agent.close());
    const run = await runHook(hook, incusDir, ['dump', '-t', '42', '-D', '/tmp/a dir']);
    expect(run).toMatchObject({ code: 0, lines: ['dump', '-t', '42', '-D', '/tmp/a dir', '--page-server', "it's a \"port\" $HOME"] });
  });

  it('fails the call when the agent says so, and says why', async () => {
    const { dir, incusDir, realCriu, remove } = setUp();
    cleanups.push(remove);
    const hook = await installHook(`${dir}/hook`, realCriu);
    const agent = await fakeAgent(incusDir, () => ({ error: 'haul: the pages of migration x never arrived on this host' }));
    cleanups.push(() => agent.close());
    const run = await runHook(hook, incusDir, ['restore', '-D', '/tmp/r']);
    expect(run.code).toBe(1);
    expect(run.lines).toEqual([]);
    expect(run.stderr).toMatch(/never arrived/);
  });

  it('leaves the move native when no agent listens, or the agent goes away without answering', async () => {
    const { dir, incusDir, realCriu, remove } = setUp();
    cleanups.push(remove);
    const hook = await installHook(`${dir}/hook`, realCriu);
    expect(await runHook(hook, incusDir, ['dump', '-t', '42'])).toMatchObject({ code: 0, lines: ['dump', '-t', '42'] });
    writeFileSync(`${incusDir}/haul-agent.sock`, ''); // a stale path that is not a socket
    expect(await runHook(hook, incusDir, ['restore', '-D', '/x'])).toMatchObject({ code: 0, lines: ['restore', '-D', '/x'] });
    // an agent that takes the question and hangs up
    const live = `${dir}/incus-live`;
    mkdirSync(live);
    const rude = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => rude.listen(`${live}/haul-agent.sock`, resolve));
    cleanups.push(() => rude.close());
    const run = await runHook(hook, live, ['dump', '-t', '7']);
    expect(run).toMatchObject({ code: 0, lines: ['dump', '-t', '7'] });
    expect(run.stderr).toMatch(/haul hook: the haul agent at .* (closed without answering|went away[^;]*); running criu dump unchanged/);
  });

  it('tells the agent its pid and every argument exactly, whatever characters they hold', async () => {
    const { dir, incusDir, realCriu, remove } = setUp();
    cleanups.push(remove);
    const hook = await installHook(`${dir}/hook`, realCriu);
    const asked: HookRequest[] = [];
    const agent = await fakeAgent(incusDir, (request) => (asked.push(request), { args: request.args }));
    cleanups.push(() => agent.close());
    const odd = ['dump', '-D', 'a "quoted" \\ back\\slash', "it's", 'tab\there', 'ünï', '$(touch /tmp/no)'];
    expect(await runHook(hook, incusDir, odd)).toMatchObject({ code: 0, lines: odd });
    expect(asked).toEqual([{ call: 'dump', pid: expect.any(Number), answer_within_ms: DUMP_ANSWER_MS, args: odd }]);
  });

  it('tells the agent how long it waits for the answer, which is how long the agent may take', async () => {
    const { dir, incusDir, realCriu, remove } = setUp();
    cleanups.push(remove);
    const hook = await installHook(`${dir}/hook`, realCriu);
    const asked: HookRequest[] = [];
    const agent = await fakeAgent(incusDir, (request) => (asked.push(request), { args: request.args }));
    cleanups.push(() => agent.close());
    await runHook(hook, incusDir, ['dump', '-t', '42']);
    await runHook(hook, incusDir, ['restore', '-D', '/tmp/r']);
    expect(asked.map((request) => request.answer_within_ms)).toEqual([DUMP_ANSWER_MS, RESTORE_ANSWER_MS]);
  });

  it('becomes CRIU in the process that asked, so liblxc finds the restore among its own children', async () => {
    const { dir, incusDir, remove } = setUp();
    cleanups.push(remove);
    const realCriu = `${dir}/pid-criu`;
    writeFileSync(realCriu, '#!/bin/sh\necho "pid $$"\n', { mode: 0o755 });
    const hook = await installHook(`${dir}/hook`, realCriu);
    const asked: HookRequest[] = [];
    const agent = await fakeAgent(incusDir, (request) => (asked.push(request), { args: request.args }));
    cleanups.push(() => agent.close());
    const run = await runHook(hook, incusDir, ['restore', '-D', '/tmp/r']);
    expect(run.lines).toEqual([`pid ${asked[0]?.pid}`]);
  });

  it('hands CRIU a connected page-server socket as --ps-socket', async () => {
    const { dir, incusDir, remove } = setUp();
    cleanups.push(remove);
    // writes through the descriptor it is given
    const realCriu = `${dir}/ps-criu`;
    writeFileSync(realCriu, '#!/bin/sh\nfor a in "$@"; do echo "$a"; done\neval "fd=\\${$#}"\necho "through the socket" >&$fd\n', { mode: 0o755 });
    const hook = await installHook(`${dir}/hook`, realCriu);
    const pageServerPath = `${dir}/page-server.sock`;
    const received = new Promise<string>((resolve) => {
      const pageServer = createServer((socket) => {
        let text = '';
        socket.on('data', (chunk: Buffer) => (text += chunk.toString())).on('end', () => resolve(text));
      });
      pageServer.listen(pageServerPath);
      cleanups.push(() => pageServer.close());
    });
    const agent = await fakeAgent(incusDir, (request) => ({ args: [...request.args, '--page-server'], pageServerSocket: pageServerPath }));
    cleanups.push(() => agent.close());
    const run = await runHook(hook, incusDir, ['dump', '-t', '42', '-D', '/tmp/d']);
    expect(run.code).toBe(0);
    expect(run.lines.slice(0, 6)).toEqual(['dump', '-t', '42', '-D', '/tmp/d', '--page-server']);
    expect(run.lines.slice(5, 7)).toEqual(['--page-server', '--ps-socket']);
    expect(await received).toBe('through the socket\n');
  });

  it('fails a restore whose pages went through haul when no agent can place them, and says why', async () => {
    const { dir, incusDir, realCriu, remove } = setUp();
    cleanups.push(remove);
    const hook = await installHook(`${dir}/hook`, realCriu);
    const restoreDir = `${dir}/restore`;
    mkdirSync(restoreDir);
    writeFileSync(`${restoreDir}/haul-migration.json`, '{"id":"m-1"}\n');
    const run = await runHook(hook, incusDir, ['restore', '-D', restoreDir]);
    expect(run.code).toBe(1);
    expect(run.lines).toEqual([]);
    expect(run.stderr).toMatch(/needs the pages haul moved, and no haul agent listens/);
  });

  it("ends a live move's final dump only once liblxc's monitor of the killed container has gone, with CRIU's status and pid the agent was told", async () => {
    const { dir, incusDir, remove } = setUp();
    cleanups.push(remove);
    // a CRIU that kills the container's init, as a final dump does, and exits with what it is told
    const realCriu = `${dir}/killing-criu`;
    writeFileSync(realCriu, '#!/bin/sh\necho "pid $$"\nkill -9 "$3"\nexit "$(cat "$0.status")"\n', { mode: 0o755 });
    const hook = await installHook(`${dir}/hook`, realCriu);
    const asked: HookRequest[] = [];
    const agent = await fakeAgent(incusDir, (request) => (asked.push(request), { args: request.args }));
    cleanups.push(() => agent.close());
    /** A stand-in for liblxc's monitor, named as liblxc names it: the init's parent, gone 1.5 s after the init. */
    const fakeMonitor = async (): Promise<{ init: number; pid: number }> => {
      const monitor = spawn('bash', ['-c', `exec -a '[lxc monitor] /var/lib/incus/containers c1' perl -e '$| = 1; my $c = fork; if (!$c) { exec "sleep", "60" } print "$c\\n"; waitpid($c, 0); select(undef, undef, undef, 1.5)'`], { stdio: ['ignore', 'pipe', 'ignore'] });
      cleanups.push(() => monitor.kill('SIGKILL'));
      const [line] = (await once(createInterface({ input: monitor.stdout! }), 'line')) as [string];
      return { init: Number(line), pid: monitor.pid! };
    };
    /** Whether the process has ended (a zombie nobody reaped yet has). */
    const ended = (pid: number): boolean => {
      try {
        return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.startsWith('Z');
      } catch {
        return true;
      }
    };

    writeFileSync(`${realCriu}.status`, '0\n');
    const monitor = await fakeMonitor();
    const dumped = await runHook(hook, incusDir, ['dump', '-t', String(monitor.init), '--action-script', '/x/action.sh']);
    expect(ended(monitor.pid)).toBe(true);
    expect(dumped.code).toBe(0);
    // the process the agent was told of is the one that became CRIU
    expect(dumped.lines).toEqual([`pid ${asked[0]!.pid}`]);

    // a failed dump leaves the container running: nothing to wait for, and CRIU's status is the hook's
    writeFileSync(`${realCriu}.status`, '3\n');
    const failed = await runHook(hook, incusDir, ['dump', '-t', String((await fakeMonitor()).init), '--action-script', '/x/action.sh']);
    expect(failed.code).toBe(3);
  });

  it('is removed by uninstall, which leaves a criu that is not haul\'s alone', async () => {
    const { dir, realCriu, remove } = setUp();
    cleanups.push(remove);
    await installHook(`${dir}/hook`, realCriu);
    expect(await uninstallHook(`${dir}/hook`)).toBe(true);
    expect(await uninstallHook(`${dir}/hook`)).toBe(false);
    mkdirSync(`${dir}/other`);
    writeFileSync(`${dir}/other/criu`, '#!/bin/sh\n', { mode: 0o755 });
    await expect(uninstallHook(`${dir}/other`)).rejects.toThrow(/not haul's hook/);
    await expect(installHook(`${dir}/other`, realCriu)).rejects.toThrow(/not haul's hook/);
  });
});
