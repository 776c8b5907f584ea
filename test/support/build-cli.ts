import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO } from './paths.js';

/** The compiled `haul` command, as users run it; tests that start it as a process use this. */
export const HAUL_CLI = join(REPO, 'dist/cli/haul.js');

/** haul's Node flags (cli/node-flags): a flag a line, blank lines and lines from a # left out. */
export const HAUL_NODE_FLAGS: readonly string[] = readFileSync(join(REPO, 'cli/node-flags'), 'utf8')
  .split('\n')
  .map((line) => line.trim())
  .filter((line) => line !== '' && !line.startsWith('#'));

/**
 * What follows node to run haul as it is installed (the Debian package's /usr/bin/haul and the test
 * bed's agents run with the same flags): for tests and benchmarks that start it to move pages.
 */
export const HAUL_COMMAND: readonly string[] = [...HAUL_NODE_FLAGS, HAUL_CLI];
const STAMP = join(REPO, 'dist/.built');

function newestSource(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestSource(path));
    else if (/\.(ts|proto|json)$/.test(entry.name)) newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

/**
 * vitest global setup: compiles haul (npm run build) when dist/ is missing or older than a source,
 * once, before any test file runs, so that tests starting the CLI run the code under test.
 */
export default function setup(): void {
  const sources = Math.max(...['src', 'proxy', 'plugin', 'cli', 'scripts', 'test/support'].map((dir) => newestSource(join(REPO, dir))), statSync(join(REPO, 'package.json')).mtimeMs);
  if (existsSync(STAMP) && statSync(STAMP).mtimeMs >= sources) return;
  execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: REPO, stdio: 'inherit' });
  writeFileSync(STAMP, '');
}
