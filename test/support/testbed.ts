import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseReport, reportArgs, type WorkloadReport } from './workload.js';

/** The incus client configuration that `scripts/testbed up` writes: remotes src and dst. */
export const INCUS_CONF = '/var/lib/haul-testbed/client';
export type TestHost = 'src' | 'dst';

/**
 * Runs the incus client against the test bed; fails with incus's own error text. Its stdin is
 * /dev/null: `incus launch` reads a config from a stdin that is not a terminal, and would wait.
 */
export async function incus(args: readonly string[], timeoutMs = 120_000): Promise<string> {
  const child = spawn('incus', [...args], { env: { ...process.env, INCUS_CONF }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', resolve);
  }).finally(() => clearTimeout(timer));
  if (code !== 0) {
    const why = code === null ? `killed after ${timeoutMs / 1000} s` : stderr.trim() || `exit code ${code}`;
    throw new Error(`incus ${args.join(' ')}: ${why}`);
  }
  return stdout;
}

/** A container on the test bed, addressed through whichever host it is on now. */
export class TestContainer {
  private constructor(
    readonly name: string,
    public host: TestHost,
  ) {}

  get ref(): string {
    return `${this.host}:${this.name}`;
  }

  /** Launches IMAGE on HOST under a fresh name and waits until READYFILE exists inside it. */
  static async launch(image: string, host: TestHost, readyFile: string, launchArgs: readonly string[] = []): Promise<TestContainer> {
    const container = new TestContainer(`haul-${image}-${randomBytes(3).toString('hex')}`, host);
    await incus(['launch', image, container.ref, '--quiet', ...launchArgs]);
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        await container.exec(['test', '-s', readyFile]);
        return container;
      } catch (error) {
        if (Date.now() > deadline) throw new Error(`${container.ref}: ${readyFile} missing after 30 s: ${String(error)}`);
        await sleep(100);
      }
    }
  }

  async exec(command: readonly string[]): Promise<string> {
    return incus(['exec', this.ref, '--', ...command]);
  }

  async readCounter(path = '/tmp/counter'): Promise<number> {
    return Number((await this.exec(['cat', path])).trim());
  }

  async workloadReport(dir: string, sinceNs?: bigint): Promise<WorkloadReport> {
    return parseReport(await this.exec(['haul-workload', ...reportArgs(dir, sinceNs)]));
  }

  /** Which hosts list this container, and in which state. */
  async whereabouts(): Promise<Record<TestHost, string | undefined>> {
    const stateOn = async (host: TestHost): Promise<string | undefined> => {
      const rows = await incus(['list', `${host}:`, '--format', 'csv', '--columns', 'ns']);
      const row = rows.split('\n').find((line) => line.startsWith(`${this.name},`));
      return row?.split(',')[1];
    };
    return { src: await stateOn('src'), dst: await stateOn('dst') };
  }

  /** Native `incus move` to the other host; returns the wall time of the client command in seconds. */
  async moveTo(target: TestHost): Promise<number> {
    const started = process.hrtime.bigint();
    await incus(['move', this.ref, `${target}:`, '--quiet'], 300_000);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    this.host = target;
    return seconds;
  }

  async delete(): Promise<void> {
    await incus(['delete', '--force', this.ref]).catch(() => undefined);
  }
}
