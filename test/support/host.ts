import { spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { describe, it } from 'vitest';
import { CRIU, CRIU_BUILDS, CRIU_VERSION, REPO, WORKLOAD } from './paths.js';

/** What a test needs of the machine; each check says what is missing, or nothing. */
export type Need = 'root' | 'criu' | 'criu-builds' | 'workload' | 'testbed';

const checks: Record<Need, () => string | undefined> = {
  root: () => (process.getuid?.() === 0 ? undefined : 'root (CRIU and Incus need it)'),
  criu: () => {
    const out = spawnSync(CRIU, ['--version'], { encoding: 'utf8' });
    return out.stdout?.includes(`Version: ${CRIU_VERSION}`)
      ? undefined
      : `CRIU ${CRIU_VERSION} at ${CRIU} (scripts/setup-host builds it)`;
  },
  // every CRIU build of the matrix, for a test that moves between them itself
  'criu-builds': () => {
    const missing = Object.entries(CRIU_BUILDS).filter(([version, binary]) => !spawnSync(binary, ['--version'], { encoding: 'utf8' }).stdout?.includes(`Version: ${version}`));
    return missing.length ? missing.map(([version, binary]) => `CRIU ${version} at ${binary} (scripts/setup-host builds it)`).join(', ') : undefined;
  },
  workload: () => {
    try {
      accessSync(WORKLOAD, constants.X_OK);
      return undefined;
    } catch {
      return `the test workload at ${WORKLOAD} (scripts/setup-host builds it)`;
    }
  },
  testbed: () => {
    const out = spawnSync(`${REPO}/scripts/testbed`, ['status'], { encoding: 'utf8' });
    return out.status === 0 ? undefined : `the test bed (scripts/testbed up):\n${out.stdout}${out.stderr}`;
  },
};

const results = new Map<Need, string | undefined>();
function missing(needs: readonly Need[]): string[] {
  return needs.flatMap((need) => {
    if (!results.has(need)) results.set(need, checks[need]());
    const reason = results.get(need);
    return reason === undefined ? [] : [reason];
  });
}

/**
 * A describe block for tests that need real CRIU, Incus or root. Outside CI they are skipped when the
 * machine lacks them; with CI=true a missing component is a failing test that says what is missing,
 * so a broken install can never pass as a green run.
 */
export function describeOnHost(name: string, needs: readonly Need[], body: () => void): void {
  const absent = missing(needs);
  if (absent.length === 0) {
    describe(name, body);
  } else if (process.env['CI'] === 'true') {
    describe(name, () => {
      it('has what it needs on this host', () => {
        throw new Error(`CI=true but this host lacks: ${absent.join('; ')}`);
      });
    });
  } else {
    describe.skip(`${name} (needs ${absent.join('; ')})`, body);
  }
}
