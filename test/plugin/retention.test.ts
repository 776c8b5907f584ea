import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { pruneIncomingDirs } from '../../plugin/incoming-migrations.js';
import { MigrationRecords, type MigrationRecord } from '../../plugin/migration-records.js';

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((dir) => rmSync(dir, { recursive: true, force: true })));
const scratch = (): string => {
  const dir = mkdtempSync(join(tmpdir(), 'haul-retention-'));
  dirs.push(dir);
  return dir;
};
const DAY = 86_400_000;
const NOW = Date.parse('2026-12-01T00:00:00.000Z');
const record = (id: string, daysAgo: number): MigrationRecord => ({ id, instance: 'c1', role: 'source', peer: 'dst', mode: 'lazy', pages: 1, bytes: 4096, startedAt: new Date(NOW - daysAgo * DAY).toISOString(), totalMs: 1, result: 'moved' });

describe('what the agent keeps of past migrations', () => {
  it('records of the last days, at most the newest so many, in their order', async () => {
    const records = new MigrationRecords(join(scratch(), 'migrations.jsonl'));
    for (const [id, days] of [['old', 100], ['a', 20], ['b', 10], ['c', 1]] as const) await records.add(record(id, days));
    expect(await records.prune(90, 10, NOW)).toBe(1);
    expect((await records.all()).map((r) => r.id)).toEqual(['a', 'b', 'c']);
    expect(await records.prune(90, 2, NOW)).toBe(1);
    expect((await records.all()).map((r) => r.id)).toEqual(['b', 'c']);
    expect(await records.prune(90, 2, NOW)).toBe(0);
  });

  it('loses no record added while a prune rewrites the file', async () => {
    const records = new MigrationRecords(join(scratch(), 'migrations.jsonl'));
    await records.add(record('old', 100));
    await Promise.all([records.prune(90, 10, NOW), records.add(record('new', 0)), records.add(record('newer', 0))]);
    expect((await records.all()).map((r) => r.id)).toEqual(['new', 'newer']);
  });

  it("incoming migrations' directories that began before the cut, and nothing else there", async () => {
    const incoming = scratch();
    const old = `${NOW - 100 * DAY}-1`;
    const recent = `${NOW - DAY}-2`;
    mkdirSync(join(incoming, old));
    writeFileSync(join(incoming, old, 'restore.log'), 'x');
    mkdirSync(join(incoming, recent));
    mkdirSync(join(incoming, 'not-ours'));
    const elsewhere = scratch();
    symlinkSync(elsewhere, join(incoming, `${NOW - 200 * DAY}-3`));
    writeFileSync(join(elsewhere, 'keep'), 'x');
    expect(await pruneIncomingDirs(incoming, { since: NOW - 90 * DAY, maxBytes: Number.MAX_SAFE_INTEGER, now: NOW })).toBe(1);
    expect(readdirSync(incoming).sort()).toEqual([recent, `${NOW - 200 * DAY}-3`, 'not-ours'].sort());
    expect(readdirSync(elsewhere)).toEqual(['keep']); // a link is never followed
  });

  it("the oldest incoming migrations' directories past the size bound, never one of the last day", async () => {
    const incoming = scratch();
    const names = [`${NOW - 30 * DAY}-1`, `${NOW - 20 * DAY}-2`, `${NOW - 10 * DAY}-3`, `${NOW - 60_000}-4`];
    for (const name of names) {
      mkdirSync(join(incoming, name, 'images'), { recursive: true });
      writeFileSync(join(incoming, name, 'images', 'pages-1.img'), randomBytes(1024 * 1024)); // a failed move's pages (random: a compressing filesystem keeps them whole)
    }
    // 4 MiB in all, at most 2.5 kept: the two oldest go
    expect(await pruneIncomingDirs(incoming, { since: NOW - 90 * DAY, maxBytes: 2.5 * 1024 * 1024, now: NOW })).toBe(2);
    expect(readdirSync(incoming).sort()).toEqual(names.slice(2).sort());
    // nothing may stay: all but the one a migration may still be using
    expect(await pruneIncomingDirs(incoming, { since: NOW - 90 * DAY, maxBytes: 0, now: NOW })).toBe(1);
    expect(readdirSync(incoming)).toEqual([names[3]]);
  });
});
