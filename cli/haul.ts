#!/usr/bin/env node
// The `haul` executable. cli/ is the top of the dependency graph: it drives proxy/ and plugin/
// through their index.ts, and nothing imports it.
import { buildProgram } from './program.js';

buildProgram().parseAsync(process.argv).catch((error: unknown) => {
  process.stderr.write(`haul: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
