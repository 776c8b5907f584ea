import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentConfigError, readAgentConfig } from '../../cli/agent-config.js';
import { REPO } from '../support/paths.js';

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((dir) => rmSync(dir, { recursive: true, force: true })));
function file(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'haul-config-'));
  dirs.push(dir);
  writeFileSync(join(dir, 'agent.conf'), text);
  return join(dir, 'agent.conf');
}

describe("the agent's configuration file", () => {
  it('as shipped, commented out, sets nothing; each setting it shows, uncommented, is one haul reads', async () => {
    const shipped = readFileSync(join(REPO, 'cli/agent.conf'), 'utf8');
    expect(await readAgentConfig(file(shipped), true)).toEqual({});
    const uncommented = shipped.replace(/^#(?=\[|[a-z-]+ = )/gm, '');
    expect(await readAgentConfig(file(uncommented), true)).toEqual({
      listen: '0.0.0.0:7444', name: 'host-a', 'default-mode': 'pre-copy', 'restore-timeout': 300, criu: '/usr/sbin/criu', 'incus-dir': '/var/lib/incus',
      peers: { 'host-b': 'host-b.example:7444' }, records: { 'max-age-days': 90, 'max-entries': 10000, 'max-incoming-mib': 4096 },
    });
  });

  it('is optional where it is the default, and must be there where it was named', async () => {
    expect(await readAgentConfig('/nonexistent/agent.conf', false)).toEqual({});
    await expect(readAgentConfig('/nonexistent/agent.conf', true)).rejects.toBeInstanceOf(AgentConfigError);
  });

  it('names the file and the setting it cannot use', async () => {
    const cases: Array<[string, RegExp]> = [
      ['listen = 7444', /listen must be a string/],
      ['lsten = "0.0.0.0:1"', /lsten is not a setting haul knows/],
      ['restore-timeout = -1', /restore-timeout must be a number above 0/],
      ['[peers]\nb = "no-port"', /peers\.b must be "HOST:PORT"/],
      ['[records]\nmax-age-days = 0', /records\.max-age-days must be a whole number above 0/],
      ['listen = "unterminated', /is not TOML \(line 1/],
    ];
    for (const [text, message] of cases) {
      const path = file(text);
      const refusal = await readAgentConfig(path, true).then(() => undefined, (error: unknown) => error);
      expect(refusal, text).toBeInstanceOf(AgentConfigError);
      expect((refusal as Error).message, text).toMatch(message);
      expect((refusal as Error).message, text).toContain(path);
    }
  });
});
