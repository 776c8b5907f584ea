import { Command } from 'commander';
import { readPackageInfo } from './package-info.js';
import { DEFAULT_STATE_DIR } from './state-dir.js';

type Out = (line: string) => void;

/**
 * The command groups, by the top-level commands each adds, loaded only when the command line names
 * one of them: the agent's group brings the Incus client (undici) and the plugin, which `haul
 * migrate` and `haul cache` never use. Loading everything made `haul migrate --help` take
 * 0.22-0.24 s instead of 0.15-0.17 s on the test machine, and haul migrate's start is in its total.
 * Help, and a command nobody knows, load them all. test/cli/haul-cli.test.ts checks this list
 * against what each group adds.
 */
export const COMMAND_GROUPS: ReadonlyArray<{ readonly commands: readonly string[]; readonly load: () => Promise<(program: Command, out: Out) => void> }> = [
  { commands: ['identity', 'trust'], load: async () => (await import('./trust-commands.js')).addTrustCommands },
  { commands: ['migrate', 'cache'], load: async () => (await import('./migration-commands.js')).addMigrationCommands },
  { commands: ['agent', 'doctor', 'status'], load: async () => (await import('./agent-commands.js')).addAgentCommands },
];

/** Options of the program itself that take a value: the command comes after it. */
const VALUED_GLOBAL_OPTIONS = new Set(['--state-dir']);

/** The top-level command `args` (the arguments after the program's name) name, if any. */
export function commandNamed(args: readonly string[]): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (VALUED_GLOBAL_OPTIONS.has(arg)) i++;
    else if (!arg.startsWith('-')) return arg;
  }
  return undefined;
}

/**
 * The `haul` command line: trust, `haul migrate`/`haul cache` (proxy/), and the Incus agent's
 * commands (plugin/); `args`, the arguments after the program's name, say which of them to load
 * (all, when not given).
 */
export async function buildProgram(out: Out = (line) => void process.stdout.write(`${line}\n`), args?: readonly string[]): Promise<Command> {
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
  const named = args && commandNamed(args);
  const owner = named === undefined ? undefined : COMMAND_GROUPS.find((group) => group.commands.includes(named));
  for (const group of owner ? [owner] : COMMAND_GROUPS) (await group.load())(program, out);
  return program;
}
