import { Command } from 'commander';
import { readPackageInfo } from './package-info.js';

/** The `haul` command line; subcommands join it as the parts they drive are built. */
export function buildProgram(): Command {
  const info = readPackageInfo();
  return new Command('haul')
    .description('Live-migrate Linux containers with CRIU: image-proxy on the source, image-cache on the destination, one framed link between them.')
    .version(info.version, '-V, --version', 'print the haul version')
    .showHelpAfterError()
    .addHelpText(
      'after',
      '\nThe test bed and benchmarks live in the repository: scripts/setup-host, scripts/testbed, scripts/bench/.',
    );
}
