import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect, it } from 'vitest';
import { ImageCache } from '../../proxy/image-cache.js';
import { migrateLazy, migratePreCopy } from '../../proxy/image-proxy.js';
import { describeOnHost } from '../support/host.js';
import { hostApp } from '../support/link-hosts.js';
import { WORKLOAD } from '../support/paths.js';
import { scratchDir } from '../support/scratch.js';
import { CRIU_ON_SECOND_HOST, holdRestoredProcesses } from '../support/second-host.js';
import { expectedChecksum, realtimeNs, reportFrom } from '../support/workload.js';

/**
 * A process tree: haul-workload as the parent of two shells joined by a pipe, the first counting
 * into it, the second writing what arrives to a file (renamed into place: a reader never sees it
 * half written).
 */
function startTree(dir: string): number {
  const script = `(i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done) | (while read n; do echo $n > '${dir}/piped.tmp' && mv '${dir}/piped.tmp' '${dir}/piped'; done) & exec '${WORKLOAD}' run --dir '${dir}/w' --mib 16`;
  const root = spawn('/bin/sh', ['-c', script], { detached: true, stdio: 'ignore' });
  root.unref();
  return root.pid!;
}

const piped = (dir: string): number => Number(readFileSync(`${dir}/piped`, 'utf8').trim());

describeOnHost('migrating a process tree through haul', ['root', 'criu', 'workload'], () => {
  for (const mode of ['pre-copy', 'lazy'] as const) {
    it(`moves a parent, its two children and the pipe between them (${mode})`, async () => {
      const scratch = scratchDir(`tree-${mode}`);
      const cleanups: Array<() => void> = [scratch.remove];
      const defer = (cleanup: () => void): void => void cleanups.push(cleanup);
      try {
        holdRestoredProcesses(scratch.path, defer);
        const cache = await ImageCache.start({ address: '127.0.0.1', port: 0, dir: `${scratch.path}/cache`, insecure: true, application: hostApp('destination'), criuBinary: CRIU_ON_SECOND_HOST });
        defer(() => void cache.close());
        const root = startTree(scratch.path);
        while (!existsSync(`${scratch.path}/piped`) || !existsSync(`${scratch.path}/w/beat`)) await sleep(50);
        const countBefore = piped(scratch.path);
        const frozenAt = realtimeNs();

        const migrate = mode === 'lazy' ? migrateLazy : migratePreCopy;
        await migrate({ pid: root, to: `ws://127.0.0.1:${cache.port}`, insecure: true, application: hostApp('source') });

        // the parent continues with its memory, and the pipe between the children still carries
        const after = await reportFrom(`${scratch.path}/w`, frozenAt);
        expect(after.pid).toBe(root);
        expect(after.checksum).toBe(await expectedChecksum(16));
        const countAfterMove = piped(scratch.path);
        await expect.poll(() => piped(scratch.path), { timeout: 10_000 }).toBeGreaterThan(countAfterMove);
        expect(countAfterMove).toBeGreaterThanOrEqual(countBefore);
      } finally {
        for (const cleanup of cleanups.reverse()) cleanup();
      }
    }, 120_000);
  }
});
