import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { LazyEarlyActions } from '../../plugin/lazy-early-actions.js';
import { encodeImage } from '../../src/criu/images/image-file.js';
import { PAGEMAP_HEADER } from '../../src/criu/images/pagemap.js';
import { Entries } from '../../src/criu/images/schemas.js';
import { PageFlag } from '../../src/criu/page-server/protocol.js';
import { scratchDir } from '../support/scratch.js';

const run = promisify(execFile);

/** Runs the action script as CRIU does: CRTOOLS_SCRIPT_ACTION in the environment. */
async function act(script: string, action: string): Promise<number> {
  try {
    await run(script, [], { env: { PATH: '/usr/bin:/bin', CRTOOLS_SCRIPT_ACTION: action } });
    return 0;
  } catch (error) {
    return (error as { code: number }).code;
  }
}

describe("the action script of a lazy Incus dump (haul's own image directory)", () => {
  const cleanups: Array<() => void | Promise<unknown>> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  function setUp(incusScriptBody: string) {
    const scratch = scratchDir('lazy-actions');
    cleanups.push(scratch.remove);
    const dumpDir = `${scratch.path}/images`;
    const checkpointDir = `${scratch.path}/checkpoint`;
    mkdirSync(dumpDir);
    mkdirSync(checkpointDir);
    const incusScript = `${scratch.path}/incus-action.sh`;
    writeFileSync(incusScript, `#!/bin/sh\ndir=${scratch.path}\necho "$CRTOOLS_SCRIPT_ACTION" >> "$dir/incus-ran"\n${incusScriptBody}\n`, { mode: 0o755 });
    return { dir: scratch.path, dumpDir, checkpointDir, incusScript };
  }

  it("at post-dump moves every image but the page data into Incus' directory, then starts Incus' step without waiting for it", async () => {
    // Incus' step goes on until the test lets it (or its directory is gone): act() returning
    // before that is the proof
    const { dir, dumpDir, checkpointDir, incusScript } = setUp('while [ -d "$dir" ] && [ ! -e "$dir/go" ]; do sleep 0.02; done; exit 3');
    for (const name of ['inventory.img', 'pstree.img', 'pages-1.img', 'pages-2.img', 'name with space.img']) writeFileSync(`${dumpDir}/${name}`, name);
    // pagemaps as CRIU 4.2 writes them (the count in nr_pages): they leave in the form CRIU 4.1 reads too
    const head = Entries.pagemapHead.encode({ pages_id: 1 });
    for (const name of ['pagemap-1.img', 'pagemap-shmem-9.img']) {
      writeFileSync(`${dumpDir}/${name}`, encodeImage(PAGEMAP_HEADER, [head, Entries.pagemapEntry.encode({ vaddr: 0x1000n, compat_nr_pages: 0, flags: PageFlag.LAZY, nr_pages: 5n })]));
    }
    const actions = await LazyEarlyActions.create(`${dir}/work`, incusScript, { dumpDir, checkpointDir });
    cleanups.push(() => actions.close());
    expect(await act(actions.scriptPath, 'post-dump')).toBe(0);
    await actions.postDump;
    expect(readdirSync(dumpDir).sort()).toEqual(['pages-1.img', 'pages-2.img']);
    expect(readdirSync(checkpointDir).sort()).toEqual(['inventory.img', 'name with space.img', 'pagemap-1.img', 'pagemap-shmem-9.img', 'pstree.img']);
    expect(readFileSync(`${checkpointDir}/pstree.img`, 'utf8')).toBe('pstree.img');
    const moved = encodeImage(PAGEMAP_HEADER, [head, Entries.pagemapEntry.encode({ vaddr: 0x1000n, compat_nr_pages: 5, flags: PageFlag.LAZY })]);
    expect(readFileSync(`${checkpointDir}/pagemap-1.img`)).toEqual(moved);
    writeFileSync(`${dir}/go`, '');
    expect(await actions.incusPostDump).toBe(3);
    expect(readFileSync(`${dir}/incus-ran`, 'utf8')).toBe('post-dump\n');
  });

  it("fails post-dump, and starts nothing of Incus', when the images cannot be moved", async () => {
    const { dir, dumpDir, incusScript } = setUp('exit 0');
    writeFileSync(`${dumpDir}/pstree.img`, 'x');
    const actions = await LazyEarlyActions.create(`${dir}/work`, incusScript, { dumpDir, checkpointDir: `${dir}/no-such-dir` });
    cleanups.push(() => actions.close());
    expect(await act(actions.scriptPath, 'post-dump')).not.toBe(0);
    await sleep(200);
    expect(readdirSync(dir)).not.toContain('incus-ran');
  });

  it("passes CRIU's other actions to Incus' script and reports when the lazy page server listens", async () => {
    const { dir, dumpDir, checkpointDir, incusScript } = setUp('exit 0');
    const actions = await LazyEarlyActions.create(`${dir}/work`, incusScript, { dumpDir, checkpointDir });
    cleanups.push(() => actions.close());
    expect(await act(actions.scriptPath, 'network-lock')).toBe(0);
    expect(await act(actions.scriptPath, 'status-ready')).toBe(0);
    await actions.statusReady;
    expect(readFileSync(`${dir}/incus-ran`, 'utf8')).toBe('network-lock\nstatus-ready\n');
  });

  it('fails post-dump, so that CRIU resumes the source and nothing of Incus runs, once the migration is abandoned', async () => {
    const { dir, dumpDir, checkpointDir, incusScript } = setUp('exit 0');
    writeFileSync(`${dumpDir}/pstree.img`, 'x');
    const actions = await LazyEarlyActions.create(`${dir}/work`, incusScript, { dumpDir, checkpointDir });
    cleanups.push(() => actions.close());
    expect(actions.abandon()).toBe(true); // not past post-dump: it fails there
    expect(await act(actions.scriptPath, 'post-dump')).not.toBe(0);
    await expect(actions.postDump).rejects.toThrow(/abandoned/);
    await sleep(200);
    expect(readdirSync(dir)).not.toContain('incus-ran');
  });

  it('leaves the source to CRIU\'s lazy page server once past post-dump', async () => {
    const { dir, dumpDir, checkpointDir, incusScript } = setUp('exit 0');
    const actions = await LazyEarlyActions.create(`${dir}/work`, incusScript, { dumpDir, checkpointDir });
    cleanups.push(() => actions.close());
    expect(await act(actions.scriptPath, 'post-dump')).toBe(0);
    await actions.postDump;
    expect(actions.abandon()).toBe(false);
    expect(await actions.incusPostDump).toBe(0); // Incus' step, detached, ends before the test does
  });
});
