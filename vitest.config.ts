import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // some tests start the compiled `haul` command; this builds it first when it is out of date
    globalSetup: ['test/support/build-cli.ts'],
    // which CRIU builds this pass runs (scripts/test's matrix)
    setupFiles: ['test/support/criu-matrix.ts'],
    // Tests that checkpoint processes or move containers share one machine's CRIU, pids and test bed:
    // they run one file at a time.
    fileParallelism: false,
    testTimeout: 30_000,
    hookTimeout: 120_000,
  },
});
