import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { TrustStore } from '../../src/link/index.js';
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

  it('takes over a lock left by a writer that died holding it, and waits for one that lives', async () => {
    const path = storePath();
    writeFileSync(`${path}.lock`, '2147483646'); // no such process
    const store = await TrustStore.open(path);
    await store.add('a', fingerprint('a'));
    writeFileSync(`${path}.lock`, String(process.pid)); // held, by a process that lives
    const added = store.add('b', fingerprint('b'));
    let done = false;
    void added.then(() => (done = true));
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(done).toBe(false);
    writeFileSync(`${path}.lock`, ''); // an empty lock is one being taken: still waited for
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(done).toBe(false);
    rmSync(`${path}.lock`);
    await added;
    expect(store.list().map((peer) => peer.name)).toEqual(['a', 'b']);
  });
});
