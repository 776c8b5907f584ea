import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LinkSession } from '../../src/link/session.js';
import { DestinationRole } from '../../plugin/destination-role.js';
import { MIGRATION_ID_FILE } from '../../plugin/hook-protocol.js';
import type { IncusClient } from '../../plugin/incus-client.js';
import { InFlight } from '../../plugin/in-flight.js';
import { MigrationRecords } from '../../plugin/migration-records.js';
import { memoryTransportPair } from '../support/memory-link.js';
import { scratchDir } from '../support/scratch.js';
import { sendControl, ControlInbox, ChannelKind, type MigrationStart, openChannel } from '../../proxy/wire/index.js';

/** incusd as the destination role sees it: receiving every instance, its pid this test's. */
function fakeIncus(): IncusClient {
  return { isCreating: async () => true, server: async () => ({ pid: process.pid, addresses: [] }) } as unknown as IncusClient;
}

interface Scene {
  readonly role: DestinationRole;
  readonly source: LinkSession;
  readonly answers: ControlInbox;
  readonly lines: string[];
  readonly dir: string;
}

describe('the destination agent failing a restore', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  function scene(records: (dir: string) => string, restoreTimeoutMs = 300_000, peerAddress = '127.0.0.1'): Scene {
    const scratch = scratchDir('destination');
    // what follows a migration here may still be discarding its files as the test ends
    cleanups.push(() => expect.poll(() => {
      try {
        scratch.remove();
        return true;
      } catch {
        return false;
      }
    }, { timeout: 30_000 }).toBe(true));
    const lines: string[] = [];
    const log = (line: string): void => void lines.push(line);
    const inFlight = new InFlight(join(scratch.path, 'in-flight.json'));
    cleanups.push(() => inFlight.close());
    const role = new DestinationRole(fakeIncus(), join(scratch.path, 'incoming'), new MigrationRecords(records(scratch.path), 'dst', log), log, undefined, restoreTimeoutMs, inFlight);
    const sessionId = randomBytes(16);
    const source = new LinkSession('dialer', sessionId);
    const destination = new LinkSession('listener', sessionId);
    const answers = new ControlInbox(source);
    role.serve(destination, peerAddress);
    const pair = memoryTransportPair();
    source.attach(pair.a);
    destination.attach(pair.b);
    cleanups.push(() => (source.abort('test over'), destination.abort('test over')));
    return { role, source, answers, lines, dir: scratch.path };
  }

  async function start(s: Scene, fields: Partial<MigrationStart> = {}): Promise<string> {
    const id = randomUUID(); // as a source makes it: other ids are refused (src/name-grammars.ts)
    const control = openChannel(s.source, ChannelKind.CONTROL, 'migration');
    await sendControl(control.writable, { migration_start: { mode: 'pre-copy', pid: 1, criu_version: '4.1.1', instance: 'c1', migration_id: id, source_host: 'src', restore_timeout_ms: 0, manager_addresses: [], ...fields } });
    expect(await s.answers.next('migration_accepted', 5000)).toMatchObject({ ok: true });
    return id;
  }

  /** Incus' restore directory as liblxc hands it to CRIU, with the id the source left in it. */
  function restoreDir(s: Scene, id: string): { dir: string; log: string } {
    const dir = join(s.dir, 'restore');
    mkdirSync(dir);
    writeFileSync(join(dir, MIGRATION_ID_FILE), JSON.stringify({ id, source: 'src', mode: 'precopy' }));
    return { dir, log: join(s.dir, 'restore.log') };
  }

  it('fails Incus\' migration and lets incusd read the log even when its record cannot be written (disk full)', async () => {
    // /dev/full: every write fails with ENOSPC
    const s = scene(() => '/dev/full');
    const id = await start(s, { manager_addresses: ['127.0.0.1:18443'] });
    s.source.abort('the source gave up'); // the pages will never be whole
    const { dir, log } = restoreDir(s, id);
    const reply = await s.role.restore(['restore', '-D', dir, '-o', log], process.pid);
    expect(reply).toMatchObject({ error: expect.stringMatching(/not usable/) });
    // contained: the cut was tried (incusd here, this test, holds no connection to cut) and the
    // gate released (the FIFO gives way to the log's copy)
    expect(s.lines.some((line) => /Incus' migration could not be cut short \(incusd here holds no connection to the source's incusd at 127\.0\.0\.1:18443\)/.test(line))).toBe(true);
    await expect.poll(() => existsSync(log) && !lstatSync(log).isFIFO(), { timeout: 5000 }).toBe(true);
    // and the record that could not be written is said in the log
    expect(s.lines.some((line) => /could not record migration .*ENOSPC/.test(line))).toBe(true);
  });

  it("cuts no connection to an address the source names that is not an IP address of the link's peer", async () => {
    const s = scene((dir) => join(dir, 'migrations.jsonl'), 300_000, '127.0.0.1');
    const id = await start(s, { manager_addresses: ['localhost:18443', '10.1.2.3:8443', 'incus.example:8443'] });
    s.source.abort('the source gave up');
    const { dir, log } = restoreDir(s, id);
    expect(await s.role.restore(['restore', '-D', dir, '-o', log], process.pid)).toMatchObject({ error: expect.any(String) });
    expect(s.lines.some((line) => /could not be cut short \(the source named no IP address of its own/.test(line))).toBe(true);
    await expect.poll(() => existsSync(log) && !lstatSync(log).isFIFO(), { timeout: 5000 }).toBe(true);
    expect(s.lines.some((line) => line.includes('ignored incusd addresses') && line.includes('localhost:18443') && line.includes('10.1.2.3:8443'))).toBe(true);
  });

  it("holds a restore no longer than this host's --restore-timeout, whatever the source asks for", async () => {
    const s = scene((dir) => join(dir, 'migrations.jsonl'), 300);
    // 49 days: about the most a uint32 of ms holds
    const id = await start(s, { restore_timeout_ms: 49 * 24 * 3600_000 });
    const control = openChannel(s.source, ChannelKind.CONTROL, 'images');
    await sendControl(control.writable, { images_complete: { files: 0, page_streams: 0, bytes: 0n, filesystem_tars: 0 } });
    expect(await s.answers.next('images_stored', 5000)).toMatchObject({ ok: true });
    // the restore that never ends: the hook's process, which would have become CRIU
    const restore = spawn('sleep', ['60'], { stdio: 'ignore' });
    cleanups.push(() => restore.kill('SIGKILL'));
    const { dir } = restoreDir(s, id);
    expect(await s.role.restore(['restore', '-D', dir], restore.pid)).toMatchObject({ args: expect.any(Array) });
    const result = await s.answers.next('restore_result', 10_000);
    expect(result).toMatchObject({ ok: false, error: expect.stringMatching(/did not finish within 0.3 s and was killed/) });
    expect(s.lines.some((line) => /asks for a restore timeout of 4233600 s; this host allows at most 0.3 s/.test(line))).toBe(true);
  });
});
