import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, lstatSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { RestoreLogGate } from '../../plugin/restore-log-gate.js';
import { describeOnHost } from '../support/host.js';
import { REPO } from '../support/paths.js';
import { scratchDir } from '../support/scratch.js';

/** A CRIU-like log larger than a pipe holds, so that it has to be streamed to the reader. */
function writeLog(path: string): string {
  const text = Array.from({ length: 5000 }, (_, i) => `(00.${String(i).padStart(6, '0')}) pie: ${i}: a restore log line, Error-free\n`).join('');
  writeFileSync(path, text);
  return text;
}

async function settledWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  return Promise.race([promise.then(() => true, () => true), sleep(ms).then(() => false)]);
}

describe("the gate on CRIU's restore log (what incusd reads before it reports a restore)", () => {
  const cleanups: Array<() => void> = [];
  afterEach(() => cleanups.splice(0).reverse().forEach((cleanup) => cleanup()));

  function setUp() {
    const scratch = scratchDir('log-gate');
    cleanups.push(scratch.remove);
    return { gatePath: `${scratch.path}/restore.log`, logPath: `${scratch.path}/criu-restore.log` };
  }

  it('keeps a reader waiting until haul lets go, then gives it the whole log; later readers find the log as a file', async () => {
    const { gatePath, logPath } = setUp();
    const gate = await RestoreLogGate.open(gatePath, logPath, 60_000);
    expect(lstatSync(gatePath).isFIFO()).toBe(true);
    const text = writeLog(logPath); // CRIU writes it after the gate is up
    const early = readFile(gatePath, 'utf8');
    expect(await settledWithin(early, 500)).toBe(false);
    gate.release();
    expect(await early).toBe(text);
    await expect.poll(() => lstatSync(gatePath).isFile(), { timeout: 5000 }).toBe(true);
    expect(readFileSync(gatePath, 'utf8')).toBe(text);
  });

  it('leaves the log in its place when nobody was reading', async () => {
    const { gatePath, logPath } = setUp();
    const gate = await RestoreLogGate.open(gatePath, logPath, 60_000);
    const text = writeLog(logPath);
    gate.release();
    await expect.poll(() => lstatSync(gatePath).isFile(), { timeout: 5000 }).toBe(true);
    expect(readFileSync(gatePath, 'utf8')).toBe(text);
  });

  it('lets go by itself after the longest wait, so that no reader waits for good on an agent that never answers', async () => {
    const { gatePath, logPath } = setUp();
    // 3 s: the reader is seen waiting well inside it, however slow this machine is to start one
    await RestoreLogGate.open(gatePath, logPath, 3000);
    const text = writeLog(logPath);
    const reader = readFile(gatePath, 'utf8');
    expect(await settledWithin(reader, 300)).toBe(false);
    expect(await Promise.race([reader, sleep(15_000).then(() => 'still waiting')])).toBe(text);
  });

  it('gives an empty log when CRIU wrote none (it never started)', async () => {
    const { gatePath, logPath } = setUp();
    const gate = await RestoreLogGate.open(gatePath, logPath, 60_000);
    const reader = readFile(gatePath, 'utf8');
    gate.release();
    expect(await reader).toBe('');
    await expect.poll(() => lstatSync(gatePath).isFile(), { timeout: 5000 }).toBe(true);
  });

  it('lets a waiting reader through with an empty log, and takes the FIFO away, when the keeper is killed', async () => {
    const { gatePath, logPath } = setUp();
    await RestoreLogGate.open(gatePath, logPath, 60_000);
    writeLog(logPath);
    const reader = readFile(gatePath, 'utf8');
    expect(await settledWithin(reader, 300)).toBe(false);
    const keeper = readdirSync('/proc').filter((pid) => /^\d+$/.test(pid)).find((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(gatePath);
      } catch {
        return false;
      }
    });
    expect(keeper).toBeDefined();
    process.kill(Number(keeper), 'SIGKILL');
    expect(await Promise.race([reader, sleep(5000).then(() => 'still waiting')])).toBe('');
    await expect.poll(() => existsSync(gatePath), { timeout: 5000 }).toBe(false);
  });

  it("never writes through a link planted in Incus' restore dir at a name it writes (the gate, or the log's copy beside it)", async () => {
    const { gatePath, logPath } = setUp();
    const victims = [`${gatePath}.victim-gate`, `${gatePath}.victim-copy`];
    for (const victim of victims) writeFileSync(victim, "not haul's to write");
    symlinkSync(victims[0]!, gatePath); // as the source's rsync may leave them
    symlinkSync(victims[1]!, `${gatePath}.haul-copy`);
    const gate = await RestoreLogGate.open(gatePath, logPath, 60_000);
    expect(lstatSync(gatePath).isFIFO()).toBe(true);
    const text = writeLog(logPath);
    gate.release();
    await expect.poll(() => lstatSync(gatePath).isFile(), { timeout: 5000 }).toBe(true);
    expect(readFileSync(gatePath, 'utf8')).toBe(text);
    for (const victim of victims) expect(readFileSync(victim, 'utf8')).toBe("not haul's to write");
  });

  it('says why when the gate cannot be made', async () => {
    const { gatePath, logPath } = setUp();
    await expect(RestoreLogGate.open(`${gatePath}/missing-dir/restore.log`, logPath, 1000)).rejects.toThrow(/cannot make the FIFO/);
  });
});

describeOnHost('the gate when the agent dies before it has a word for it', ['root'], () => {
  const cleanups: Array<() => void> = [];
  afterEach(() => cleanups.splice(0).reverse().forEach((cleanup) => cleanup()));

  /**
   * An agent of its own (a Node process, killable) that opens the gate with the given restore's CRIU
   * and ss filters, says so on stdout, and waits.
   */
  async function agentHolding(gatePath: string, logPath: string, criuPid: number, cutFilters: string[]): Promise<{ kill(): void }> {
    const script = `
      const { RestoreLogGate } = await import(${JSON.stringify(join(REPO, 'dist/plugin/restore-log-gate.js'))});
      const { identify } = await import(${JSON.stringify(join(REPO, 'dist/src/host/process-identity.js'))});
      await RestoreLogGate.open(${JSON.stringify(gatePath)}, ${JSON.stringify(logPath)}, 60000, { criu: identify(${criuPid}), cutFilters: ${JSON.stringify(cutFilters)} });
      console.log('holding');
      setInterval(() => {}, 1000);
    `;
    const agent = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    cleanups.push(() => agent.kill('SIGKILL'));
    const [line] = (await once(createInterface({ input: agent.stdout! }), 'line')) as [string];
    expect(line).toBe('holding');
    return { kill: () => agent.kill('SIGKILL') };
  }

  it("kills the restore's CRIU and cuts incusd's connections to the source before it lets the reader through", async () => {
    const scratch = scratchDir('log-gate-dead-agent');
    cleanups.push(scratch.remove);
    const gatePath = `${scratch.path}/restore.log`;
    const logPath = `${scratch.path}/criu-restore.log`;
    writeLog(logPath);
    // the restore's CRIU, still running
    const criu = spawn('sleep', ['60'], { stdio: 'ignore' });
    cleanups.push(() => criu.kill('SIGKILL'));
    const criuGone = once(criu, 'exit');
    // incusd's connection to the source's incusd: this process's, here
    const accepted: Socket[] = [];
    const server = createServer((socket) => void accepted.push(socket.on('error', () => {})));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanups.push(() => (accepted.forEach((socket) => socket.destroy()), server.close()));
    const port = (server.address() as { port: number }).port;
    const migration = connect(port, '127.0.0.1');
    await once(migration, 'connect');
    cleanups.push(() => migration.destroy());
    const cut = once(migration, 'error').then(([error]) => (error as NodeJS.ErrnoException).code);
    const filter = `dst 127.0.0.1:${port} and src 127.0.0.1:${migration.localPort}`;

    const agent = await agentHolding(gatePath, logPath, criu.pid!, [filter]);
    const reader = readFile(gatePath, 'utf8');
    expect(await settledWithin(reader, 300)).toBe(false);
    agent.kill();
    await criuGone;
    expect(await cut).toBe('ECONNABORTED');
    expect(await Promise.race([reader, sleep(5000).then(() => 'still waiting')])).toContain('a restore log line');
  });
});
