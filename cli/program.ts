import { Command } from 'commander';
import { readPackageInfo } from './package-info.js';
import { addAgentCommands } from './agent-commands.js';
import { addMigrationCommands } from './migration-commands.js';
import { DEFAULT_STATE_DIR, addTrustCommands } from './trust-commands.js';

/** The `haul` command line: trust, `haul migrate`/`haul cache` (proxy/), and the Incus agent's commands (plugin/). */
export function buildProgram(out: (line: string) => void = (line) => void process.stdout.write(`${line}\n`)): Command {
  const info = readPackageInfo();
  const program = new Command('haul')
    .description('Live-migrate Linux containers with CRIU: image-proxy on the source, image-cache on the destination, one framed link between them.')
    .version(info.version, '-V, --version', 'print the haul version')
    .option('--state-dir <dir>', "where this host keeps its link identity and trust store (or $HAUL_STATE_DIR)", DEFAULT_STATE_DIR)
    .showHelpAfterError()
    .addHelpText(
      'after',
      '\nExit codes: 0 done; 1 failed (a migration\'s source runs on, nothing lost); 2 wrong command line or configuration, nothing done;\n3 a migration in doubt (its outcome could not be learnt: check both hosts before acting).',
    );
  addTrustCommands(program, out);
  addMigrationCommands(program, out);
  addAgentCommands(program, out);
  return program;
}
