import { afterAll, expect, it } from 'vitest';
import { describeOnHost } from '../support/host.js';
import { TestContainer, CLEANUP_MS, deleteAll } from '../support/testbed.js';

/** A shell in the container appending its next number to a file on the root filesystem every 10 ms. */
const APPENDER = 'i=0; while :; do i=$((i+1)); echo $i >> /root/seq; sleep 0.01; done';

/** The numbers the file should hold 1, 2, 3... with none missing: those that are, in order. */
function missingLines(text: string): number[] {
  const numbers = text.split('\n').filter(Boolean).map(Number);
  const missing: number[] = [];
  let expected = 1;
  for (const n of numbers) {
    for (; expected < n; expected++) missing.push(expected);
    expected = Math.max(expected, n + 1);
  }
  return missing;
}

describeOnHost('incus move through haul keeps what the container wrote to its disk', ['root', 'criu', 'testbed'], () => {
  const containers: TestContainer[] = [];
  afterAll(() => deleteAll(containers), CLEANUP_MS);

  // btrfs (the test bed's default pool) sends the root filesystem once, before the dump: natively,
  // what the container writes until the freeze is lost there (docs/incus-native-move.md)
  for (const mode of ['pre-copy', 'lazy'] as const) {
    for (const pool of ['default', 'dir']) {
      it(`loses no line of a file appended every 10 ms, moved to dst and back (${pool} pool, ${mode})`, async () => {
        const container = await TestContainer.launch('busybox', 'src', '/tmp/counter', ['--storage', pool, '--config', `user.haul.mode=${mode}`]);
        containers.push(container);
        await container.exec(['sh', '-c', `setsid sh -c '${APPENDER}' </dev/null >/dev/null 2>&1 &`]);
        await new Promise((resolve) => setTimeout(resolve, 500));
        await container.moveTo('dst');
        await container.moveTo('src');
        await new Promise((resolve) => setTimeout(resolve, 300));
        const text = await container.exec(['cat', '/root/seq']);
        const lines = text.split('\n').filter(Boolean).length;
        expect(lines).toBeGreaterThan(50); // it kept appending, here and there
        expect(missingLines(text)).toEqual([]);
        const after = Number((await container.exec(['tail', '-n', '1', '/root/seq'])).trim());
        await new Promise((resolve) => setTimeout(resolve, 200));
        expect(Number((await container.exec(['tail', '-n', '1', '/root/seq'])).trim())).toBeGreaterThan(after); // and goes on
      }, 600_000);
    }
  }
});
