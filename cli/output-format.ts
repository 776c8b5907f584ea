import { Option, type Command } from 'commander';

/** How a listing command prints: lines for a person, or JSON for a program. */
export type OutputFormat = 'table' | 'json';

/**
 * Adds `-f, --format table|json` to a listing command (`json`: what it then prints), and `--json`,
 * kept as the older spelling of `--format json`.
 */
export function withFormat(command: Command, json: string): Command {
  return command
    .addOption(new Option('-f, --format <format>', `table, or json: ${json}`).choices(['table', 'json']).default('table'))
    .addOption(new Option('--json', 'the same as --format json').hideHelp());
}

export const formatOf = (options: { format: OutputFormat; json?: boolean }): OutputFormat => (options.json ? 'json' : options.format);
