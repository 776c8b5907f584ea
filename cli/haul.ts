#!/usr/bin/env node
// The `haul` executable. cli/ is the top of the dependency graph: it drives proxy/ and plugin/
// through their index.ts, and nothing imports it.
import { CommanderError } from 'commander';
import { exitCodeFor, throwUsageErrors } from './exit-codes.js';
import { buildProgram } from './program.js';

const fail = (error: unknown): void => {
  // commander has printed its own usage errors, help and version already
  if (!(error instanceof CommanderError)) process.stderr.write(`haul: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = exitCodeFor(error);
};

buildProgram(undefined, process.argv.slice(2))
  .then((program) => {
    throwUsageErrors(program);
    return program.parseAsync(process.argv);
  })
  .catch(fail);
