import { expect, it } from 'vitest';
import { runCriu } from '../../src/criu/run/criu-process.js';
import { describeOnHost } from '../support/host.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { realtimeNs } from '../support/workload.js';

describeOnHost('CRIU on this host: checkpoint and restore in place', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();

  it('restores a 64 MiB workload with the same pid, every page intact, and its counter continuing', async () => {
    const { source: images, workload, expectContinued } = await scenes.start('cr', 64);

    const frozenAt = realtimeNs();
    await runCriu('dump', ['-t', String(workload.pid), '-D', images], { logFile: `${images}/dump.log` });
    await workload.exited;
    await runCriu('restore', ['-D', images, '-d'], { logFile: `${images}/restore.log` });

    const after = await expectContinued(frozenAt);
    // the freeze shows as one gap in the beats the process itself kept
    expect(after.maxGapNs).toBeGreaterThan(20_000_000n);
  });
});
