import { Command, InvalidArgumentError } from 'commander';
import { ImageCache, MigrationInDoubtError, hostHandshake, migrateLazy, migratePreCopy } from '../proxy/index.js';
import { type EndpointOptions, loadOrCreateIdentity } from '../src/link/index.js';
import { parseListen, thisHost } from './host-and-address.js';
import { openTrustStore, stateDirOf } from './state-dir.js';
import { logStrayErrors } from './stray-errors.js';

async function endpoint(stateDir: string, insecure: boolean, role: 'source' | 'destination'): Promise<EndpointOptions> {
  const application = hostHandshake(await thisHost(role));
  if (insecure) return { insecure: true, application };
  return { identity: await loadOrCreateIdentity(stateDir), trust: await openTrustStore(stateDir), application };
}

/** This process's peak resident memory so far, in MiB. */
function peakRssMib(): number {
  return Math.round(process.resourceUsage().maxRSS / 1024);
}

function parsePid(value: string): number {
  const pid = Number(value);
  if (!Number.isInteger(pid) || pid < 1) throw new InvalidArgumentError('a process id is a positive whole number');
  return pid;
}

/** `haul migrate` (source) and `haul cache` (destination): process migration without a manager. */
export function addMigrationCommands(program: Command, out: (line: string) => void): void {
  program
    .command('migrate')
    .description('live-migrate a running process tree to a host running `haul cache`; the source ends only once the destination has restored it (and, with --lazy, has every page)')
    .argument('<pid>', 'root of the process tree', parsePid)
    .requiredOption('--to <host:port>', 'the destination cache')
    .option('--lazy', 'post-copy: restore at once from the small images, move the memory after', false)
    .option('--insecure', 'plain WebSocket, no TLS or authentication (loopback only)', false)
    .option('--json', 'print a JSON summary instead of progress (also when it fails)', false)
    .option('--work-dir <dir>', 'keep CRIU\'s dump log and the images here (never the pages); by default a temporary directory, removed after')
    .action(async (pid: number, options: { to: string; lazy: boolean; insecure: boolean; json: boolean; workDir?: string }, command: Command) => {
      const stateDir = stateDirOf(command);
      const url = `${options.insecure ? 'ws' : 'wss'}://${options.to}`;
      // on a terminal, page counts overwrite each other on one line; elsewhere only stages are logged
      const tty = process.stderr.isTTY;
      const say = options.json
        ? () => {}
        : (line: string) => {
            const counting = line.startsWith('pages ');
            if (counting && !tty) return;
            process.stderr.write(tty ? `\r\x1b[2Khaul: ${line}${counting ? '' : '\n'}` : `haul: ${line}\n`);
          };
      logStrayErrors((line) => process.stderr.write(`haul: ${line}\n`));
      const migrate = options.lazy ? migrateLazy : migratePreCopy;
      const mode = options.lazy ? 'lazy' : 'pre-copy';
      let summary;
      try {
        summary = await migrate({ ...(await endpoint(stateDir, options.insecure, 'source')), pid, to: url, onProgress: say, ...(options.workDir ? { workDir: options.workDir } : {}) });
      } catch (error) {
        if (options.json) {
          const result = error instanceof MigrationInDoubtError ? 'in-doubt' : 'failed';
          out(JSON.stringify({ mode, result, error: error instanceof Error ? error.message : String(error), peakRssMib: peakRssMib() }));
        }
        throw error;
      } finally {
        if (tty && !options.json) process.stderr.write('\r\x1b[2K'); // clear the last page count
      }
      if (options.json) out(JSON.stringify({ ...summary, result: 'restored', peakRssMib: peakRssMib() }));
      else out(`migrated ${pid} (${mode}): ${summary.pages} pages, ${(summary.bytes / 2 ** 20).toFixed(1)} MiB; dump ${summary.dumpMs} ms, images ${summary.transferMs} ms, restore ${summary.restoreMs} ms, downtime ${summary.downtimeMs} ms; pid ${summary.restoredPid} on the destination`);
    });

  program
    .command('cache')
    .description('serve as the destination of `haul migrate`: receive images and pages, restore, report back')
    .requiredOption('--listen <address:port>', 'where to listen', parseListen)
    .requiredOption('--dir <dir>', 'where each migration\'s images are kept')
    .option('--insecure', 'plain WebSocket, no TLS or authentication (loopback only)', false)
    .action(async (options: { listen: { address: string; port: number }; dir: string; insecure: boolean }, command: Command) => {
      const stateDir = stateDirOf(command);
      logStrayErrors((line) => process.stderr.write(`${new Date().toISOString()} haul cache: ${line}\n`));
      const cache = await ImageCache.start({
        ...(await endpoint(stateDir, options.insecure, 'destination')),
        ...options.listen,
        dir: options.dir,
        // the peak so far, so that the cost of each migration can be seen as it ends
        onEvent: (event) => out(JSON.stringify(event.kind === 'migration' ? event : { ...event, peakRssMib: peakRssMib() })),
      });
      out(JSON.stringify({ kind: 'listening', address: options.listen.address, port: cache.port }));
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await cache.close();
    });
}
