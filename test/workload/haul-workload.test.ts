import { execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { promisify } from 'node:util';
import { afterEach, expect, it } from 'vitest';
import { describeOnHost } from '../support/host.js';
import { WORKLOAD } from '../support/paths.js';
import { scratchDir } from '../support/scratch.js';
import { LocalWorkload, expectedChecksum, parseReport, realtimeNs, reportFrom, stopWorkload } from '../support/workload.js';

const execFileAsync = promisify(execFile);

// Every migration test and benchmark reads integrity and downtime from this program, so what it
// reports must be right when nothing happened to it.
describeOnHost('haul-workload, the process every test migrates', ['workload'], () => {
  const cleanups: Array<() => void> = [];
  afterEach(() => cleanups.splice(0).reverse().forEach((cleanup) => cleanup()));

  it('has a checksum that depends on the memory size and nothing else', async () => {
    const [one, again, two] = await Promise.all([expectedChecksum(1), expectedChecksum(1), expectedChecksum(2)]);
    expect(one).toMatch(/^[0-9a-f]{16}$/);
    expect(again).toBe(one);
    expect(two).not.toBe(one);
  });

  it('reports its pid, intact memory and beats about every 10 ms when undisturbed', async () => {
    const scratch = scratchDir('workload');
    cleanups.push(scratch.remove);
    const since = realtimeNs();
    const workload = await LocalWorkload.start(`${scratch.path}/w`, 8);
    cleanups.push(() => stopWorkload(workload.pid));
    // asked until it has beaten 30 times: how soon depends on how busy the machine is (a CI run
    // saw 19 beats in 500 ms), what each report says does not
    let report = await workload.report(since);
    for (const deadline = Date.now() + 20_000; report.windowBeats < 30 && Date.now() < deadline; ) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      report = await workload.report(since);
    }
    expect(report.pid).toBe(workload.pid);
    expect(report.mib).toBe(8);
    expect(report.checksum).toBe(await expectedChecksum(8));
    expect(report.windowBeats).toBeGreaterThanOrEqual(30);
    expect(report.tick).toBeGreaterThanOrEqual(report.windowBeats);
    // beats follow each other: no pause anywhere near what a freeze of a migration would show
    expect(report.maxGapNs).toBeLessThan(1_000_000_000n);
  });

  it('shows a pause as the largest gap, and only inside the asked window', async () => {
    const scratch = scratchDir('workload');
    cleanups.push(scratch.remove);
    const workload = await LocalWorkload.start(`${scratch.path}/w`, 1);
    cleanups.push(() => stopWorkload(workload.pid));
    process.kill(workload.pid, 'SIGSTOP');
    await new Promise((resolve) => setTimeout(resolve, 300));
    process.kill(workload.pid, 'SIGCONT');
    await new Promise((resolve) => setTimeout(resolve, 100));
    const whole = await workload.report();
    expect(whole.maxGapNs).toBeGreaterThan(250_000_000n);
    const afterPause = await workload.report(realtimeNs());
    expect(afterPause.maxGapNs).toBeLessThan(250_000_000n);
  });

  it('says so within the timeout when no workload answers', async () => {
    const scratch = scratchDir('workload');
    cleanups.push(scratch.remove);
    mkdirSync(`${scratch.path}/nobody`);
    const asked = execFileAsync(WORKLOAD, ['report', '--dir', `${scratch.path}/nobody`, '--timeout', '0.3']);
    await expect(asked).rejects.toThrow(/no report from the workload .* within 0\.3 s/);
    await expect(reportFrom(`${scratch.path}/missing-dir`)).rejects.toThrow();
  });

  it('rejects a report that lacks a field instead of reading it as zero', () => {
    expect(() => parseReport('nonce x\npid 1\n')).toThrow(/lacks "mib"/);
  });
});
