import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../../..', import.meta.url));

/**
 * What follows node to run haul as it is installed: its Node flags (cli/node-flags, which the
 * Debian package's /usr/bin/haul and the test bed's agents run with too), then its entry point.
 */
export const HAUL_COMMAND: readonly string[] = [
  ...readFileSync(join(REPO, 'cli/node-flags'), 'utf8').split('\n').map((line) => line.trim()).filter((line) => line !== '' && !line.startsWith('#')),
  join(REPO, 'dist/cli/haul.js'),
];
