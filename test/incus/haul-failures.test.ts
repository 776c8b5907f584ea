import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, expect, it } from 'vitest';
import type { MigrationProgress } from '../../plugin/in-flight.js';
import { MigrationRecords } from '../../plugin/migration-records.js';
import { describeOnHost } from '../support/host.js';
import { isLive } from '../support/second-host.js';
import { NativeMoveDefect, TestContainer, agentPid, incus, killAgent, startAgents, type TestHost, CLEANUP_MS, deleteAll } from '../support/testbed.js';
import { expectedChecksum, realtimeNs, type WorkloadReport } from '../support/workload.js';

const recordsOf = async (host: TestHost, instance: string) =>
  (await new MigrationRecords(`/var/lib/haul-testbed/${host}/haul/agent/migrations.jsonl`).all()).filter((r) => r.instance === instance);

function inFlight(host: TestHost): MigrationProgress[] {
  try {
    return JSON.parse(readFileSync(`/var/lib/haul-testbed/${host}/haul/agent/in-flight.json`, 'utf8')) as MigrationProgress[];
  } catch {
    return [];
  }
}

/** The 256 MiB workload in /run/big is the process `before` saw, its memory intact, beating since. */
async function expectSameWorkload(container: TestContainer, before: WorkloadReport, since: bigint): Promise<void> {
  const now = await container.workloadReport('/run/big', since);
  expect(now.pid).toBe(before.pid);
  expect(now.checksum).toBe(await expectedChecksum(256));
  expect(now.tick).toBeGreaterThan(before.tick);
}

/**
 * Bytes of pages the destination's agent has stored so far for migrations that arrived since
 * `sinceMs` (they grow as pages come in, and go once placed for the restore). Read from the files
 * themselves: in-flight.json is written at most twice a second, which a fast move can slip between.
 */
function pageBytesArrived(host: TestHost, sinceMs: number): number {
  const incoming = `/var/lib/haul-testbed/${host}/haul/agent/incoming`;
  let bytes = 0;
  try {
    for (const dir of readdirSync(incoming).filter((name) => Number(name.split('-')[0]) >= sinceMs)) {
      for (const name of readdirSync(`${incoming}/${dir}`).filter((file) => /^pages-\d+\.img$/.test(file))) bytes += statSync(`${incoming}/${dir}/${name}`).size;
    }
  } catch {
    // not there yet, or placed for the restore meanwhile: look again
  }
  return bytes;
}

/**
 * A container on src with the 256 MiB workload in /run/big, moving to dst in `mode`, once
 * `underWay` says the move is far enough along (the move not awaited: the caller decides).
 */
async function moveUnderWay(mode: 'pre-copy' | 'lazy', containers: TestContainer[], underWay: (container: TestContainer, sinceMs: number) => boolean) {
  const container = await TestContainer.launch('busybox', 'src', '/tmp/counter', ['--config', `user.haul.mode=${mode}`]);
  containers.push(container);
  await container.exec(['haul-workload', 'start', '--dir', '/run/big', '--mib', '256']);
  const before = await container.workloadReport('/run/big');
  const since = realtimeNs();
  const sinceMs = Date.now();
  const move = container.moveTo('dst');
  let settled = false;
  move.then(() => (settled = true), () => (settled = true)); // handles its rejection until the caller awaits it
  const deadline = Date.now() + 60_000;
  let seen = false;
  while (!(seen = underWay(container, sinceMs)) && !settled && Date.now() < deadline) await sleep(5);
  if (!seen) throw new Error(`the move of ${container.name} ${settled ? 'ended' : 'was still not'} before it was seen under way`);
  return { container, before, since, move };
}

/** Processes of a `criu restore` of this container still there (a killed CRIU must take them along). */
function restoreLeftovers(instance: string): number[] {
  const left: number[] = [];
  for (const name of readdirSync('/proc').filter((entry) => /^\d+$/.test(entry))) {
    try {
      const argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      // liblxc's cgroup for the container: lxc.payload.NAME, or NAME-1 and so on when that was taken
      if (argv[1] === 'restore' && argv.some((arg) => new RegExp(`/lxc\\.payload\\.${instance}(-\\d+)?$`).test(arg))) left.push(Number(name));
    } catch {
      // ended meanwhile
    }
  }
  return left;
}

async function incusConfigUnset(container: TestContainer, key: string): Promise<void> {
  await incus(['config', 'unset', container.ref, key]);
}

describeOnHost('incus move when haul is missing or fails', ['root', 'criu', 'testbed'], () => {
  const containers: TestContainer[] = [];
  afterEach(async () => startAgents()); // whatever a test stopped comes back for the next
  afterAll(() => deleteAll(containers), CLEANUP_MS);

  it('moves natively from a host whose agent is not running', async () => {
    await killAgent('src');
    const container = await TestContainer.launch('busybox', 'src', '/tmp/counter', ['--config', 'user.haul.mode=precopy'] /* the older spelling of pre-copy */);
    containers.push(container);
    const before = await container.readCounter();
    // natively, the native path's known defects may show; either way haul stayed out
    const moved = await container.moveTo('dst').then(() => true, (error: unknown) => {
      if (!(error instanceof NativeMoveDefect)) throw error;
      return false;
    });
    if (moved) {
      expect(await container.whereabouts()).toEqual({ src: undefined, dst: 'RUNNING' });
      await sleep(1100);
      expect(await container.readCounter()).toBeGreaterThan(before);
    }
    expect(await recordsOf('src', container.name)).toEqual([]);
    expect(await recordsOf('dst', container.name)).toEqual([]);
  }, 600_000);

  it('lets a move in progress finish when its source agent is stopped (systemctl stop, a package upgrade), and only then ends', async () => {
    const { container, before, since, move } = await moveUnderWay('lazy', containers, (container) => inFlight('src').some((m) => m.instance === container.name));
    const pid = agentPid('src');
    const logged = readFileSync('/var/lib/haul-testbed/src/log/agent.log', 'utf8').length;
    process.kill(pid, 'SIGTERM');
    await move;
    expect(await container.whereabouts()).toEqual({ src: undefined, dst: 'RUNNING' });
    await expectSameWorkload(container, before, since);
    expect((await recordsOf('src', container.name)).at(-1)).toMatchObject({ result: 'moved' });
    expect(readFileSync('/var/lib/haul-testbed/src/log/agent.log', 'utf8').slice(logged)).toMatch(/stopping: 1 moves in progress; taking no new one/);
    // and once the move is over, the agent ends by itself
    const ends = Date.now() + 30_000;
    while (isLive(pid) && Date.now() < ends) await sleep(100);
    expect(isLive(pid)).toBe(false);
  }, 600_000);

  it("keeps the source running with its memory when the destination's agent dies in the middle of a move, and a later move succeeds", async () => {
    // the middle: pages are on their way through haul, 4 MiB of them stored at the destination
    const { container, before, since, move } = await moveUnderWay('pre-copy', containers, (_, sinceMs) => pageBytesArrived('dst', sinceMs) > 4 * 1024 * 1024);
    await killAgent('dst');
    await expect(move).rejects.toThrow();
    expect((await container.whereabouts()).src).toBe('RUNNING');
    await expectSameWorkload(container, before, since);
    expect((await recordsOf('src', container.name)).at(-1)).toMatchObject({ result: 'failed' });

    await startAgents();
    await container.moveTo('dst');
    expect(await container.whereabouts()).toEqual({ src: undefined, dst: 'RUNNING' });
    await expectSameWorkload(container, before, since);
  }, 600_000);

  for (const mode of ['pre-copy', 'lazy'] as const) {
    it(`keeps the source running with its memory when the destination's restore fails (${mode}), leaves nothing behind there, and a later move succeeds`, async () => {
      // haul kills a restore that outlives user.haul.restore-timeout: 1 ms, so that it is killed
      // as CRIU starts (a 256 MiB pre-copy restore now takes under 0.2 s here)
      const timeout = '0.001';
      const container = await TestContainer.launch('busybox', 'src', '/tmp/counter', ['--config', `user.haul.mode=${mode}`, '--config', `user.haul.restore-timeout=${timeout}`]);
      containers.push(container);
      await container.exec(['haul-workload', 'start', '--dir', '/run/big', '--mib', '256']);
      const before = await container.workloadReport('/run/big');
      const since = realtimeNs();
      const failure = await container.moveTo('dst').then(() => undefined, (error: unknown) => error);
      expect(failure).toBeInstanceOf(Error);
      // the move fails as soon as Incus' source does; haul's destination records it a moment later
      await expect.poll(async () => (await recordsOf('dst', container.name)).at(-1), { timeout: 30_000 }).toMatchObject({ result: 'failed', error: expect.stringMatching(new RegExp(`did not finish within ${timeout} s and was killed`)) });
      // Incus 6.0.4 can report a failed restore as a success, and incus move then deletes the
      // source: haul held Incus' destination back until it had cut Incus' migration connections
      expect(failure).not.toBeInstanceOf(NativeMoveDefect);
      // the killed restore's processes went with it (CRIU killed alone leaves them waiting for good)
      await expect.poll(() => restoreLeftovers(container.name), { timeout: 10_000 }).toEqual([]);
      const dstLog = readFileSync('/var/lib/haul-testbed/dst/log/agent.log', 'utf8');
      expect(dstLog).toMatch(new RegExp(`warning: ${container.name}: the restore failed; [1-9]\\d* connections of incusd here to the source's incusd`));
      expect(dstLog).toMatch(new RegExp(`error: ${container.name}: migration \\S+ failed: `)); // at its level, as the journal gets it
      expect((await container.whereabouts()).src).toBe('RUNNING');
      await expectSameWorkload(container, before, since);
      await expect.poll(async () => (await recordsOf('src', container.name)).at(-1)?.result, { timeout: 30_000 }).toBe('failed');

      // Incus' destination is still failing the move when the client returns (its stop hooks wait
      // for a lock for a minute), and leaks a "stop" lock on the name; the agent releases it, and
      // then nothing of the move is left there
      await expect.poll(() => readFileSync('/var/lib/haul-testbed/dst/log/agent.log', 'utf8').includes(`${container.name}: after the failed move:`), { timeout: 120_000, interval: 1000 }).toBe(true);
      expect(await container.whereabouts()).toEqual({ src: 'RUNNING', dst: undefined });
      // and Incus' destination failed the move because its migration was cut before it went on, not
      // by the luck of its race (it would then name CRIU's failure)
      const incusFailures = readFileSync('/var/lib/haul-testbed/dst/log/incusd.log', 'utf8').split('\n').filter((line) => line.includes('Failed migration on target') && line.includes(`instance=${container.name} `));
      expect(incusFailures.at(-1)).toMatch(/Error reading migration control source/);
      await incusConfigUnset(container, 'user.haul.restore-timeout');
      await container.moveTo('dst');
      expect(await container.whereabouts()).toEqual({ src: undefined, dst: 'RUNNING' });
      await expectSameWorkload(container, before, since);
    }, 600_000);
  }

  it("keeps the source running with its memory when the destination cannot record the failed restore (disk full), and a later move succeeds", async () => {
    // every write to the destination agent's record file fails with ENOSPC (/dev/full bound over it)
    const recordsFile = '/var/lib/haul-testbed/dst/haul/agent/migrations.jsonl';
    if (!existsSync(recordsFile)) writeFileSync(recordsFile, '', { mode: 0o600 });
    await promisify(execFile)('mount', ['--bind', '/dev/full', recordsFile]);
    let mounted = true;
    const unmount = async (): Promise<void> => {
      if (mounted) await promisify(execFile)('umount', [recordsFile]);
      mounted = false;
    };
    try {
      const agent = agentPid('dst');
      const logBefore = readFileSync('/var/lib/haul-testbed/dst/log/agent.log', 'utf8').length;
      const dstLog = (): string => readFileSync('/var/lib/haul-testbed/dst/log/agent.log', 'utf8').slice(logBefore);
      const container = await TestContainer.launch('busybox', 'src', '/tmp/counter', ['--config', 'user.haul.mode=pre-copy', '--config', 'user.haul.restore-timeout=0.001']);
      containers.push(container);
      await container.exec(['haul-workload', 'start', '--dir', '/run/big', '--mib', '256']);
      const before = await container.workloadReport('/run/big');
      const since = realtimeNs();
      const failure = await container.moveTo('dst').then(() => undefined, (error: unknown) => error);
      expect(failure).toBeInstanceOf(Error);
      expect(failure).not.toBeInstanceOf(NativeMoveDefect);
      // contained all the same: Incus' migration cut, and the record's failure said in the log
      await expect.poll(dstLog, { timeout: 30_000 }).toMatch(new RegExp(`${container.name}: the restore failed; [1-9]\\d* connections of incusd here to the source's incusd`));
      await expect.poll(dstLog, { timeout: 30_000 }).toMatch(/could not record migration .*ENOSPC/);
      expect((await container.whereabouts()).src).toBe('RUNNING');
      await expectSameWorkload(container, before, since);
      // the agent lives on (an unhandled ENOSPC used to end it) and repairs what Incus left
      expect(existsSync(`/proc/${agent}`)).toBe(true);
      expect(agentPid('dst')).toBe(agent);
      await expect.poll(() => dstLog().includes(`${container.name}: after the failed move:`), { timeout: 120_000, interval: 1000 }).toBe(true);
      await unmount();
      await incusConfigUnset(container, 'user.haul.restore-timeout');
      await container.moveTo('dst');
      expect(await container.whereabouts()).toEqual({ src: undefined, dst: 'RUNNING' });
      await expectSameWorkload(container, before, since);
    } finally {
      await unmount();
    }
  }, 600_000);

  it("keeps the source running with its memory when the destination's agent is killed while it guards a failed restore, and a later move succeeds", async () => {
    const logPath = '/var/lib/haul-testbed/dst/log/agent.log';
    const logBefore = readFileSync(logPath, 'utf8').length;
    const dstLog = (): string => readFileSync(logPath, 'utf8').slice(logBefore);
    // the agent would kill the restore at once (1 ms): it is killed itself as the restore starts,
    // with incusd held at the restore's log and Incus' migration not yet cut
    const container = await TestContainer.launch('busybox', 'src', '/tmp/counter', ['--config', 'user.haul.mode=pre-copy', '--config', 'user.haul.restore-timeout=0.001']);
    containers.push(container);
    await container.exec(['haul-workload', 'start', '--dir', '/run/big', '--mib', '256']);
    const before = await container.workloadReport('/run/big');
    const since = realtimeNs();
    const move = container.moveTo('dst').then(() => undefined, (error: unknown) => error);
    const restoring = new RegExp(`${container.name}: pages of migration \\S+ placed; restoring`);
    const deadline = Date.now() + 120_000;
    while (!restoring.test(dstLog()) && Date.now() < deadline) await sleep(5);
    await killAgent('dst');
    const failure = await move;
    expect(failure).toBeInstanceOf(Error);
    expect(failure).not.toBeInstanceOf(NativeMoveDefect);
    expect((await container.whereabouts()).src).toBe('RUNNING');
    await expectSameWorkload(container, before, since);
    await expect.poll(() => restoreLeftovers(container.name), { timeout: 10_000 }).toEqual([]);

    // the next agent finishes what the killed one left: Incus' leaked lock released
    await startAgents();
    await expect.poll(() => dstLog().includes(`${container.name}: after a migration the previous agent left unfinished:`), { timeout: 240_000, interval: 1000 }).toBe(true);
    expect(await container.whereabouts()).toEqual({ src: 'RUNNING', dst: undefined });
    await incusConfigUnset(container, 'user.haul.restore-timeout');
    await container.moveTo('dst');
    expect(await container.whereabouts()).toEqual({ src: undefined, dst: 'RUNNING' });
    await expectSameWorkload(container, before, since);
  }, 600_000);
});
