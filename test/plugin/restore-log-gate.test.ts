import { existsSync, lstatSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { RestoreLogGate } from '../../plugin/restore-log-gate.js';
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
    await RestoreLogGate.open(gatePath, logPath, 1000);
    const text = writeLog(logPath);
    const reader = readFile(gatePath, 'utf8');
    expect(await settledWithin(reader, 300)).toBe(false);
    expect(await Promise.race([reader, sleep(5000).then(() => 'still waiting')])).toBe(text);
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
