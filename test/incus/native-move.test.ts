import { afterAll, expect, it } from 'vitest';
import { describeOnHost } from '../support/host.js';
import { TestContainer, type TestHost } from '../support/testbed.js';
import { expectedChecksum, realtimeNs } from '../support/workload.js';

const WORKLOAD_DIR = '/run/haul';

describeOnHost('native incus move between the test hosts (the baseline haul improves on)', ['root', 'criu', 'testbed'], () => {
  let container: TestContainer | undefined;
  afterAll(async () => container?.delete());

  it('live-migrates a running busybox counter container to dst and back, and it keeps counting', async () => {
    container = await TestContainer.launch('busybox', 'src', '/tmp/counter');
    const intact = await expectedChecksum(1);
    let before = await container.workloadReport(WORKLOAD_DIR);
    let counter = await container.readCounter();
    expect(before.checksum).toBe(intact);

    for (const target of ['dst', 'src'] satisfies TestHost[]) {
      const movedAt = realtimeNs();
      const seconds = await container.moveTo(target);
      expect(await container.whereabouts()).toEqual(
        target === 'dst' ? { src: undefined, dst: 'RUNNING' } : { src: 'RUNNING', dst: undefined },
      );
      const after = await container.workloadReport(WORKLOAD_DIR, movedAt);
      // the same process (not a restart by init), with its memory, and it went on beating
      expect(after.pid).toBe(before.pid);
      expect(after.checksum).toBe(intact);
      expect(after.tick).toBeGreaterThan(before.tick);
      // it was frozen once, for less than the whole move took
      expect(after.windowBeats).toBeGreaterThan(0);
      expect(after.maxGapNs).toBeGreaterThan(20_000_000n);
      expect(Number(after.maxGapNs) / 1e9).toBeLessThan(seconds);
      // the shell counter was not restarted either
      await new Promise((resolve) => setTimeout(resolve, 1100));
      const counterAfter = await container.readCounter();
      expect(counterAfter).toBeGreaterThan(counter);
      before = after;
      counter = counterAfter;
    }
  }, 180_000);
});
