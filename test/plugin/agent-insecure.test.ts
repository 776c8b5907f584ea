import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Agent } from '../../plugin/agent.js';
import { hostHandshake } from '../../proxy/index.js';
import { scratchDir } from '../support/scratch.js';

describe('haul agent without TLS', () => {
  const cleanups: Array<() => void> = [];
  afterEach(() => cleanups.splice(0).forEach((cleanup) => cleanup()));

  it('refuses to start, even on loopback: any local user could be its peer', async () => {
    const scratch = scratchDir('agent-insecure');
    cleanups.push(() => scratch.remove());
    const started = Agent.start({
      insecure: true,
      application: hostHandshake({ criu_version: '4.1.1', page_size: 4096, architecture: process.arch, capabilities: [], haul_version: '0', role: 'agent' }),
      incusDir: join(scratch.path, 'incus'), stateDir: join(scratch.path, 'state'), listen: { address: '127.0.0.1', port: 0 },
      peers: [], name: 'test', defaultMode: 'pre-copy',
    });
    await expect(started).rejects.toMatchObject({ code: 'HAUL_AGENT_INSECURE' });
  });
});
