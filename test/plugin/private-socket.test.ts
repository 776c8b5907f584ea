import { lstatSync, readdirSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { listenPrivately } from '../../plugin/private-socket.js';
import { scratchDir } from '../support/scratch.js';

describe("the agent's hook socket", () => {
  const cleanups: Array<() => void> = [];
  afterEach(() => cleanups.splice(0).reverse().forEach((cleanup) => cleanup()));

  it('is never reachable by others, even under a permissive umask', async () => {
    const scratch = scratchDir('hook-socket');
    cleanups.push(() => scratch.remove());
    const path = join(scratch.path, 'haul-agent.sock');
    const server = createServer((socket) => socket.end('hello'));
    cleanups.push(() => server.close());
    const umask = process.umask(0);
    cleanups.push(() => process.umask(umask));
    // the moment the socket is bound: whatever exists at its name then must be the owner's alone
    let atListen: number | undefined;
    server.once('listening', () => (atListen = lstatSync(path, { throwIfNoEntry: false })?.mode));
    await listenPrivately(server, path);
    if (atListen !== undefined) expect(atListen & 0o077).toBe(0);
    expect(lstatSync(path).isSocket()).toBe(true);
    expect(lstatSync(path).mode & 0o777).toBe(0o600);
    // it answers at its name, and leaves nothing else behind
    const answer = await new Promise<string>((resolve, reject) => {
      const client = createConnection(path);
      let text = '';
      client.on('data', (chunk) => (text += chunk.toString())).on('end', () => resolve(text)).on('error', reject);
    });
    expect(answer).toBe('hello');
    expect(readdirSync(scratch.path)).toEqual(['haul-agent.sock']);
  });
});
