import { fileURLToPath } from 'node:url';

/** Where scripts/setup-host installs what the tests and benchmarks drive. */
export const CRIU = '/usr/local/sbin/criu';
export const CRIU_VERSION = '4.1.1';
export const WORKLOAD = '/usr/local/bin/haul-workload';
export const REPO = fileURLToPath(new URL('../..', import.meta.url));
