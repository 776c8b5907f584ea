import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO } from '../support/paths.js';

describe('the last line of defence of haul cache, migrate and agent', () => {
  it('logs an error nothing caught and a rejection nobody awaited, with their code, and the process goes on', async () => {
    const module = join(REPO, 'dist/src/cli/stray-errors.js');
    const script = `
      const { logStrayErrors } = await import(${JSON.stringify(module)});
      logStrayErrors((line) => console.log(line));
      setTimeout(() => { throw Object.assign(new Error('thrown in a timer'), { code: 'ERR_STREAM_DESTROYED' }); }, 10);
      setTimeout(() => void Promise.reject(new Error('rejected unheard')), 20);
      setTimeout(() => console.log('still running'), 100);
    `;
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script]);
    const lines = stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^BUG: an error nothing caught \[ERR_STREAM_DESTROYED\], kept running: Error: thrown in a timer \|/);
    expect(lines[1]).toMatch(/^BUG: a promise nobody awaited rejected, kept running: Error: rejected unheard/);
    expect(lines[2]).toBe('still running');
  });
});
