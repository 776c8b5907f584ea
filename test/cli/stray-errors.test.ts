import { execFile, spawn } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO } from '../support/paths.js';

describe('the last line of defence of haul cache, migrate and agent', () => {
  it('logs an error nothing caught and a rejection nobody awaited, with their code, and the process goes on', async () => {
    const module = join(REPO, 'dist/cli/stray-errors.js');
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

  it('goes on when its output is closed (the reader of its pipe went away)', async () => {
    const module = join(REPO, 'dist/cli/stray-errors.js');
    const script = `
      const { logStrayErrors } = await import(${JSON.stringify(module)});
      logStrayErrors((line) => process.stdout.write(line + '\\n'));
      const beat = setInterval(() => process.stdout.write('beat\\n'), 5);
      setTimeout(() => { clearInterval(beat); process.stderr.write('survived'); }, 300);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdout.once('data', () => child.stdout.destroy()); // EPIPE for the child's next writes
    const code = await new Promise((resolve) => child.once('close', resolve)); // after its output is read
    expect(stderr).toBe('survived');
    expect(code).toBe(0);
  });
});
