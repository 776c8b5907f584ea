import { CommanderError, type Command } from 'commander';

/**
 * haul's exit codes, the same for every command (README, "Exit codes"): a script can tell a move
 * that failed (the source runs on, nothing lost) from one in doubt (check both hosts by hand).
 */
export const EXIT = {
  ok: 0,
  /** The command failed; for a migration: the source runs on, the destination kept nothing. */
  failed: 1,
  /** The command line, or the configuration file, was wrong: nothing was done. */
  usage: 2,
  /** A migration whose outcome this host cannot know (the commit's answer was lost). */
  inDoubt: 3,
} as const;

/** The exit code an error that ended a command stands for, by its stable code. */
export function exitCodeFor(error: unknown): number {
  if (error instanceof CommanderError) return error.exitCode === 0 ? EXIT.ok : EXIT.usage;
  const code = error instanceof Error && 'code' in error ? (error as { code: unknown }).code : undefined;
  if (code === 'HAUL_MIGRATION_IN_DOUBT') return EXIT.inDoubt;
  // systemd does not restart an agent whose configuration is wrong (RestartPreventExitStatus=2)
  if (code === 'HAUL_AGENT_CONFIG') return EXIT.usage;
  return EXIT.failed;
}

/**
 * Makes commander throw its usage errors (after printing them) instead of exiting on its own, on
 * `program` and every subcommand, so that they end with EXIT.usage like every other ending.
 */
export function throwUsageErrors(program: Command): void {
  program.exitOverride();
  program.commands.forEach(throwUsageErrors);
}
