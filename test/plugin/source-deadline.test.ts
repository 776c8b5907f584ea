import { existsSync, mkdirSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { EndpointOptions } from '../../src/link/endpoint-options.js';
import { LinkListener } from '../../src/link/listener.js';
import type { LinkAbortedError, LinkSession } from '../../src/link/session.js';
import { MIGRATION_ID_FILE } from '../../plugin/hook-protocol.js';
import type { IncusClient, IncusInstance } from '../../plugin/incus-client.js';
import { InFlight } from '../../plugin/in-flight.js';
import { MigrationRecords } from '../../plugin/migration-records.js';
import { SourceRole, type Peer } from '../../plugin/source-role.js';
import { scratchDir } from '../support/scratch.js';
import { hostHandshake } from '../../proxy/index.js';
import { sendControl, ControlInbox, ChannelKind, openChannel } from '../../proxy/wire/index.js';

const endpoint: EndpointOptions = {
  insecure: true,
  application: hostHandshake({ criu_version: '4.1.1', page_size: 4096, architecture: process.arch, capabilities: ['pre-copy', 'lazy'], haul_version: '0', role: 'agent' }),
};

/** incusd as the source role sees it: one running instance, init pid 4242, with no root pool to catch up. */
function fakeIncus(): IncusClient {
  const instance: IncusInstance = { name: 'c1', status: 'Running', config: {}, expanded_config: { 'user.haul.mode': 'precopy' }, state: { pid: 4242, status: 'Running' } };
  return {
    instanceWithInit: async (pid: number) => (pid === 4242 ? instance : undefined),
    server: async () => ({ pid: 1, addresses: ['127.0.0.1:18443'] }),
    version: async () => '6.0.4',
  } as unknown as IncusClient;
}

describe("the source agent and the CRIU hook's wait for its answer", () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  function role(peers: Peer[]): { source: SourceRole; checkpoint: string; args: string[]; lines: string[] } {
    const scratch = scratchDir('source-deadline');
    cleanups.push(() => scratch.remove());
    const lines: string[] = [];
    const log = (line: string): void => void lines.push(line);
    const inFlight = new InFlight(join(scratch.path, 'in-flight.json'));
    cleanups.push(() => inFlight.close());
    const checkpoint = join(scratch.path, 'checkpoint');
    mkdirSync(checkpoint);
    const source = new SourceRole(fakeIncus(), peers, endpoint, new MigrationRecords(join(scratch.path, 'migrations.jsonl'), 'src', log), 'pre-copy', async () => ({ major: 4, minor: 1, patch: 1 }), log, join(scratch.path, 'outgoing'), 'src', inFlight);
    return { source, checkpoint, args: ['dump', '-t', '4242', '-D', checkpoint, '--action-script', '/bin/true'], lines };
  }

  /** A peer that takes the TCP connection and never says a word. */
  async function silentPeer(): Promise<Peer> {
    const held: Socket[] = [];
    const server = createServer((socket) => void held.push(socket.on('error', () => {})));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => (held.forEach((socket) => socket.destroy()), server.close()));
    return { name: `silent-${(server.address() as { port: number }).port}`, url: `ws://127.0.0.1:${(server.address() as { port: number }).port}` };
  }

  /** A peer that accepts the migration, once `beforeAccepting` has run; its session and why it ended. */
  async function acceptingPeer(beforeAccepting: () => void = () => {}): Promise<{ peer: Peer; ended: Promise<LinkAbortedError | 'closed'> }> {
    const listener = await LinkListener.listen('127.0.0.1', 0, endpoint);
    cleanups.push(() => listener.close());
    const ended = new Promise<LinkAbortedError | 'closed'>((resolve) => {
      listener.once('session', (session: LinkSession) => {
        session.once('aborted', resolve);
        session.once('closed', () => resolve('closed'));
        const inbox = new ControlInbox(session);
        const answers = openChannel(session, ChannelKind.CONTROL, 'answers');
        void inbox.next('migration_start').then(async () => {
          beforeAccepting();
          await sendControl(answers.writable, { migration_accepted: { ok: true, error: '' } });
        }, () => {});
      });
    });
    return { peer: { name: 'dst', url: `ws://127.0.0.1:${listener.port}` }, ended };
  }

  it("stops offering the migration to peers once the hook's wait is nearly over, and answers native in time", async () => {
    const { source, args } = role([await silentPeer(), await silentPeer(), await silentPeer()]);
    const started = Date.now();
    const reply = await source.dump(args, undefined, { deadline: started + 2500, gaveUp: new AbortController().signal });
    const took = Date.now() - started;
    // three silent peers would take each their own timeout: the deadline cut them short (the note
    // says so), with room for a busy machine's stalls
    expect(took).toBeLessThan(6000);
    expect(reply).toMatchObject({ args, note: expect.stringMatching(/nearly over/) });
  }, 15_000);

  it('abandons a migration the peer takes after the hook gave up: the peer is told, the id left nowhere', async () => {
    const gaveUp = new AbortController();
    const { peer, ended } = await acceptingPeer(() => gaveUp.abort());
    const { source, args, checkpoint } = role([peer]);
    const reply = await source.dump(args, undefined, { deadline: Date.now() + 20_000, gaveUp: gaveUp.signal });
    expect(reply).toMatchObject({ args });
    expect(existsSync(join(checkpoint, MIGRATION_ID_FILE))).toBe(false);
    expect(await ended).toMatchObject({ reason: expect.stringMatching(/hook gave up/) });
  }, 15_000);

  it('abandons a migration whose answer the hook stopped waiting for', async () => {
    const gaveUp = new AbortController();
    const { peer, ended } = await acceptingPeer();
    const { source, args, checkpoint } = role([peer]);
    const reply = await source.dump(args, undefined, { deadline: Date.now() + 20_000, gaveUp: gaveUp.signal });
    expect(reply).toMatchObject({ args: expect.arrayContaining(['--page-server']) });
    expect(existsSync(join(checkpoint, MIGRATION_ID_FILE))).toBe(true);
    gaveUp.abort(); // the hook's socket closed before the answer reached it
    expect(await ended).toMatchObject({ reason: expect.stringMatching(/hook gave up/) });
    await expect.poll(() => existsSync(join(checkpoint, MIGRATION_ID_FILE))).toBe(false);
  }, 15_000);
});
