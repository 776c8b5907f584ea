import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect, it } from 'vitest';
import { criuLogErrors, startCriu } from '../../src/criu/run/criu-process.js';
import { describeOnHost } from '../support/host.js';
import { CRIU } from '../support/paths.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { freePort } from '../support/scratch.js';
import { realtimeNs } from '../support/workload.js';

/**
 * The destination of a lazy migration on one machine: the frozen source keeps its pid until every page
 * is served, so the restore runs in a fresh pid namespace (whose init is this small shell), where that
 * pid is free. The shell starts `criu lazy-pages`, restores with --lazy-pages and records both results.
 */
const DESTINATION_SCRIPT = `
cd "$DST"
"$CRIU" lazy-pages --page-server --address 127.0.0.1 --port "$PORT" -D "$DST" -o "$DST/lazy-pages.log" -v4 &
lazy=$!
i=0; while [ ! -S "$DST/lazy-pages.socket" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
"$CRIU" restore --lazy-pages -D "$DST" -d -o "$DST/restore.log" -v4
echo $? > "$DST/restore.rc"
wait $lazy; echo $? > "$DST/lazy-pages.rc"
while :; do sleep 3600 & wait $!; done
`;

async function waitForFile(path: string, seconds: number): Promise<string> {
  const deadline = Date.now() + seconds * 1000;
  while (!existsSync(path)) {
    if (Date.now() > deadline) throw new Error(`${path} did not appear within ${seconds} s`);
    await sleep(50);
  }
  return readFileSync(path, 'utf8').trim();
}

describeOnHost('CRIU on both ends: lazy (post-copy) migration', ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();

  it('restores a 64 MiB workload before its memory arrives, then pulls every page from the source', async () => {
    const { source, destination, workload, defer, expectContinued } = await scenes.start('lazy', 64);

    const port = String(await freePort());
    const frozenAt = realtimeNs();
    const dump = startCriu(
      'dump',
      ['-t', String(workload.pid), '-D', source, '--lazy-pages', '--address', '127.0.0.1', '--port', port],
      { logFile: `${source}/dump.log`, statusFd: true },
    );
    defer(() => dump.child.kill('SIGKILL'));
    await dump.ready; // images written, the source's page server is listening, the workload is frozen

    // only the images cross before the restore: the private memory stays behind, served on demand
    const imageBytes = readdirSync(source)
      .filter((name) => name.endsWith('.img'))
      .map((name) => {
        copyFileSync(`${source}/${name}`, `${destination}/${name}`);
        return readFileSync(`${source}/${name}`).length;
      })
      .reduce((a, b) => a + b, 0);
    expect(imageBytes).toBeLessThan(16 * 1024 * 1024);

    const holder = spawn('unshare', ['--pid', '--fork', '--kill-child', '--mount-proc', 'sh', '-c', DESTINATION_SCRIPT], {
      env: { ...process.env, CRIU, DST: destination, PORT: port },
      stdio: 'ignore',
      detached: true,
    });
    defer(() => holder.kill('SIGKILL'));

    const restoreRc = await waitForFile(`${destination}/restore.rc`, 30);
    expect(restoreRc, (await criuLogErrors(`${destination}/restore.log`)).join('\n')).toBe('0');
    // every page is transferred, then the source dump ends and kills the frozen original
    await dump.exited;
    await workload.exited;
    expect(await waitForFile(`${destination}/lazy-pages.rc`, 30)).toBe('0');

    await expectContinued(frozenAt);
  });
});
