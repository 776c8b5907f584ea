import { basename, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The CRIU builds scripts/setup-host installs (scripts/lib/host.sh), by version. */
export const CRIU_BUILDS: Readonly<Record<string, string>> = {
  '4.1.1': '/usr/local/sbin/criu',
  '4.2.1': '/usr/local/lib/haul-testbed/criu-4.2.1/criu',
};

function buildOf(version: string, variable: string): string {
  const binary = CRIU_BUILDS[version];
  if (!binary) throw new Error(`${variable}=${version}: no such CRIU build (scripts/setup-host installs ${Object.keys(CRIU_BUILDS).join(', ')})`);
  return binary;
}

/**
 * The CRIU the tests run where a source's is meant (and haul's default, HAUL_CRIU, set for the
 * tests by test/support/criu-matrix.ts), and the one the destination's stand-in runs
 * (criu-in-pid-namespace.sh). scripts/test runs the CRIU tests once per pair of its matrix.
 */
export const CRIU_VERSION = process.env['HAUL_TEST_CRIU_SOURCE'] || '4.1.1';
export const CRIU = buildOf(CRIU_VERSION, 'HAUL_TEST_CRIU_SOURCE');
export const DESTINATION_CRIU_VERSION = process.env['HAUL_TEST_CRIU_DESTINATION'] || CRIU_VERSION;
export const DESTINATION_CRIU = buildOf(DESTINATION_CRIU_VERSION, 'HAUL_TEST_CRIU_DESTINATION');
export const WORKLOAD = '/usr/local/bin/haul-workload';
const TWO_UP = resolve(fileURLToPath(new URL('../..', import.meta.url)));
/** The checkout: two up from here, three from the compiled copy in dist/ (the benchmarks run that). */
export const REPO = basename(TWO_UP) === 'dist' ? dirname(TWO_UP) : TWO_UP;
