import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { CacheStore } from '../../proxy/cache-store.js';
import { sendImageFiles } from '../../proxy/images-to-link.js';
import { DestinationRole } from '../../plugin/destination-role.js';
import { MIGRATION_ID_FILE } from '../../plugin/hook-protocol.js';
import { InFlight } from '../../plugin/in-flight.js';
import type { IncusClient } from '../../plugin/incus-client.js';
import { MigrationRecords } from '../../plugin/migration-records.js';
import { LinkSession } from '../../src/link/session.js';
import { memoryTransportPair } from '../support/memory-link.js';
import { scratchDir } from '../support/scratch.js';
import { sendControl, ControlInbox, ChannelKind, openChannel } from '../../proxy/wire/index.js';

const cleanups: Array<() => void> = [];
afterEach(() => cleanups.splice(0).reverse().forEach((cleanup) => cleanup()));

/** A source's session to a destination that serves it with `serve` (called before anything arrives, as the listener does). */
function linked(serve: (session: LinkSession) => void): { source: LinkSession; answers: ControlInbox } {
  const id = randomBytes(16);
  const source = new LinkSession('dialer', id);
  const destination = new LinkSession('listener', id);
  serve(destination);
  const answers = new ControlInbox(source);
  const pair = memoryTransportPair();
  source.attach(pair.a);
  destination.attach(pair.b);
  cleanups.push(() => [source, destination].forEach((session) => session.isOpen && session.abort('the test is over')));
  return { source, answers };
}

/** The agent's destination side, with an incusd that says it is receiving every instance it is asked about. */
function destination() {
  const scratch = scratchDir('hostile-names');
  cleanups.push(scratch.remove);
  const cacheDir = join(scratch.path, 'agent', 'cache');
  const askedAbout: string[] = [];
  const incus = {
    isCreating: async (instance: string) => (askedAbout.push(instance), true),
    server: async () => Promise.reject(new Error('no incusd in this test')),
  } as unknown as IncusClient;
  const lines: string[] = [];
  const role = new DestinationRole(incus, cacheDir, new MigrationRecords(join(scratch.path, 'records.jsonl')), (line) => lines.push(line), undefined, 5000, new InFlight(join(scratch.path, 'in-flight.json')));
  return { root: scratch.path, cacheDir, role, askedAbout, lines };
}

async function startMigration(role: DestinationRole, start: { instance: string; id: string }) {
  const { source, answers } = linked((session) => role.serve(session, '127.0.0.1'));
  const control = openChannel(source, ChannelKind.CONTROL, 'migration');
  await sendControl(control.writable, {
    migration_start: { mode: 'pre-copy', pid: 1, criu_version: '4.1.1', instance: start.instance, migration_id: start.id, source_host: 'peer', restore_timeout_ms: 0, manager_addresses: [] },
  });
  const accepted = await answers.next('migration_accepted', 10_000);
  // an empty image set: were the migration taken, its restore could go ahead at once
  await sendControl(control.writable, { images_complete: { files: 0, page_streams: 0, bytes: 0n, filesystem_tars: 0 } }).catch(() => {});
  return accepted;
}

/** A process that stands for the hook that would become CRIU. */
function stand_in(): ChildProcess {
  const child = spawn('sleep', ['2'], { stdio: 'ignore' });
  cleanups.push(() => child.kill('SIGKILL'));
  return child;
}

describe("names from outside haul's trust are checked before they become paths", () => {
  it('takes a migration whose id and instance name are what a source sends', async () => {
    const { role, askedAbout } = destination();
    const accepted = await startMigration(role, { instance: 'c1', id: randomUUID() });
    expect(accepted).toMatchObject({ ok: true });
    expect(askedAbout).toEqual(['c1']);
  });

  it('refuses a migration id that is not a UUID, and plants nothing where it points, however the restore then names it', async () => {
    const { root, cacheDir, role, lines } = destination();
    const id = '../../../victim';
    const planted = join(cacheDir, `restore-${id}`);
    expect(planted.startsWith(cacheDir)).toBe(false);
    const accepted = await startMigration(role, { instance: 'c1', id });
    expect(accepted.ok).toBe(false);
    expect(accepted.error).toMatch(/HAUL_BAD_NAME.*migration id "\.\.\/\.\.\/\.\.\/victim"/);
    expect(lines.join('\n')).toMatch(/refused: .*migration id/);
    // Incus' rsync brings the same id in the checkpoint dir
    const checkpoint = join(root, 'checkpoint');
    mkdirSync(checkpoint);
    writeFileSync(join(checkpoint, MIGRATION_ID_FILE), JSON.stringify({ id, source: 'peer', mode: 'precopy' }));
    const reply = await role.restore(['restore', '-D', checkpoint], stand_in().pid);
    expect(reply).toEqual({ error: expect.stringMatching(/refused the restore .*migration id/) });
    expect(existsSync(planted)).toBe(false);
    expect(readdirSync(root).sort()).toEqual(['agent', 'checkpoint', 'in-flight.json', 'records.jsonl'].filter((name) => existsSync(join(root, name))));
    expect(existsSync(join(root, 'victim'))).toBe(false);
  });

  it("refuses an instance name Incus would not take, before asking incusd about it", async () => {
    const { role, askedAbout } = destination();
    for (const instance of ['../../1.0/instances/other', 'c1/../c2', '1c', 'c1-', 'x'.repeat(64)]) {
      const accepted = await startMigration(role, { instance, id: randomUUID() });
      expect(accepted.ok).toBe(false);
      expect(accepted.error).toMatch(/HAUL_BAD_NAME.*instance name/);
    }
    expect(askedAbout).toEqual([]);
  });

  it("refuses a restore whose migration file in Incus' restore dir is a link, and does not read through it", async () => {
    const { root, role } = destination();
    const checkpoint = join(root, 'checkpoint');
    mkdirSync(checkpoint);
    const elsewhere = join(root, 'elsewhere.json');
    writeFileSync(elsewhere, JSON.stringify({ id: randomUUID() }));
    symlinkSync(elsewhere, join(checkpoint, MIGRATION_ID_FILE));
    const reply = await role.restore(['restore', '-D', checkpoint], stand_in().pid);
    expect(reply).toEqual({ error: expect.stringMatching(/not a plain file/) });
  });
});

describe('the disk changes a source sends', () => {
  it('are kept only up to the cap the applier would take: a larger tar fails the image set', async () => {
    const scratch = scratchDir('big-tar');
    cleanups.push(scratch.remove);
    let store!: CacheStore;
    const { source } = linked((session) => (store = new CacheStore(session, scratch.path, { maxDiskChangesBytes: 64 * 1024 })));
    const tar = openChannel(source, ChannelKind.FILESYSTEM_TAR, 'rootfs');
    tar.writable.on('error', () => {});
    tar.writable.end(Buffer.alloc(256 * 1024));
    const outcome = await store.complete.then(() => 'complete', (error: { code?: string }) => error.code);
    expect(outcome).toBe('HAUL_DISK_CHANGES_TOO_LARGE');
  });
});

describe('the image names a source sends', () => {
  for (const name of ['../../victim.img', 'disk-changes.tar', 'lazy-pages.bin', 'restore.log', '.hidden.img', 'core-1.img/../../x.img', 'CORE-1.img', '']) {
    it(`refuses ${JSON.stringify(name)} and writes nothing`, async () => {
      const scratch = scratchDir('hostile-images');
      cleanups.push(scratch.remove);
      const dir = join(scratch.path, 'a', 'b', 'store');
      mkdirSync(dir, { recursive: true });
      let store!: CacheStore;
      const { source } = linked((session) => (store = new CacheStore(session, dir)));
      const control = openChannel(source, ChannelKind.CONTROL, 'migration');
      const file = openChannel(source, ChannelKind.IMAGE_FILE, name);
      file.writable.end(Buffer.from('what a hostile source would have written'));
      await sendControl(control.writable, { images_complete: { files: 1, page_streams: 0, bytes: 41n, filesystem_tars: 0 } });
      const outcome = await store.complete.then(() => 'complete', (error: { code?: string }) => error.code);
      expect(outcome).toBe('HAUL_BAD_NAME');
      expect(readdirSync(dir)).toEqual([]);
      expect(readdirSync(join(scratch.path, 'a')).concat(readdirSync(scratch.path))).toEqual(['b', 'a']);
    });
  }

  it('are checked by the source too, before it sends any', async () => {
    const scratch = scratchDir('hostile-images');
    cleanups.push(scratch.remove);
    writeFileSync(join(scratch.path, 'core-1.img'), 'an image');
    writeFileSync(join(scratch.path, 'notes.txt'), 'not one');
    const opened: string[] = [];
    const { source } = linked((session) => session.on('channel', (channel) => opened.push(channel.name)));
    await expect(sendImageFiles(source, scratch.path)).rejects.toMatchObject({ code: 'HAUL_BAD_NAME', refused: 'notes.txt' });
    await sleep(50);
    expect(opened).toEqual([]);
  });

  it('takes the names CRIU writes', async () => {
    const { isCriuImageName } = await import('../../src/criu/index.js');
    const written = ['inventory.img', 'core-1.img', 'mm-1.img', 'ids-1.img', 'fdinfo-2.img', 'pagemap-1.img', 'pagemap-shmem-1848.img', 'pages-65537.img', 'tty-info.img', 'ghost-file-1a.img', 'tmpfs-dev-42.tar.gz.img', 'route6-9.img', 'ip6tables-9.img', 'stats-dump', 'stats-restore', 'irmap-cache'];
    expect(written.filter((name) => !isCriuImageName(name))).toEqual([]);
  });
});
