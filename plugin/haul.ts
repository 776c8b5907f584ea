#!/usr/bin/env node
// The `haul` executable: the shared commands (src/cli) and the Incus plugin's. It lives here, at the
// top of the dependency graph, so that nothing in src/ or proxy/ has to know the plugin.
import { buildProgram } from '../src/cli/program.js';
import { addAgentCommands } from './agent-commands.js';

const out = (line: string): void => void process.stdout.write(`${line}\n`);
const program = buildProgram(out);
addAgentCommands(program, out);
program.parseAsync(process.argv).catch((error: unknown) => {
  process.stderr.write(`haul: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
