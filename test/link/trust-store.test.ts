import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { TrustStore } from '../../src/link/index.js';
import { REPO } from '../support/paths.js';
import { scratchDir } from '../support/scratch.js';

const fingerprint = (digit: string): string => digit.repeat(64);

describe('the trust store shared by the agent and haul trust', () => {
  const scratches: Array<{ remove(): void }> = [];
  afterEach(() => scratches.splice(0).forEach((scratch) => scratch.remove()));
  const storePath = (): string => {
    const scratch = scratchDir('trust');
    scratches.push(scratch);
    return join(scratch.path, 'trust.json');
  };

  it('loses no peer when two writers add at once (a pairing in the agent, haul trust add beside it)', async () => {
    const path = storePath();
    // two stores on one file: what two processes each hold in memory
    const [agent, command] = [await TrustStore.open(path), await TrustStore.open(path)];
    await Promise.all([agent.add('a', fingerprint('a')), command.add('b', fingerprint('b')), agent.add('c', fingerprint('c')), command.add('d', fingerprint('d'))]);
    const saved = JSON.parse(readFileSync(path, 'utf8')) as { peers: Array<{ name: string }> };
    expect(saved.peers.map((peer) => peer.name).sort()).toEqual(['a', 'b', 'c', 'd']);
    expect((await TrustStore.open(path)).list().map((peer) => peer.name).sort()).toEqual(['a', 'b', 'c', 'd']);
  });

  it('waits for a writer that holds the lock, and goes on at once when that writer is killed', async () => {
    const path = storePath();
    const store = await TrustStore.open(path);
    await store.add('a', fingerprint('a'));
    // another writer, holding the lock as haul does, then killed mid-change (kill -9: no clean-up)
    const other = spawn('/usr/bin/perl', [join(REPO, 'src/link/hold-lock.pl'), `${path}.lock`, '10'], { stdio: ['pipe', 'pipe', 'ignore'] });
    const [line] = (await once(createInterface({ input: other.stdout! }), 'line')) as [string];
    expect(line).toBe('locked');
    let done = false;
    const added = store.add('b', fingerprint('b')).then(() => (done = true));
    await sleep(300);
    expect(done).toBe(false);
    other.kill('SIGKILL');
    await added;
    expect(store.list().map((peer) => peer.name)).toEqual(['a', 'b']);
    // and nothing of the lock is in the way of the next change
    await store.add('c', fingerprint('c'));
    expect((await TrustStore.open(path)).list().map((peer) => peer.name)).toEqual(['a', 'b', 'c']);
  });
});
