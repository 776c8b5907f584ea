/**
 * Fuzzes every decoder of outside bytes (test/fuzz/targets.ts) with mutations of valid inputs and
 * prints one JSON document: per target, the inputs fed, how many were accepted and refused, the
 * failures (crashes, hangs, allocations over the bound, broken invariants, leaks) with the first
 * inputs that caused them, and the rate. Failures listed in test/fuzz/known-findings.ts are
 * counted apart; exits 1 when any other failure occurred.
 */
import { Command, InvalidArgumentError } from 'commander';
import { DEFAULT_OPTIONS, fuzzTarget, type TargetReport } from '../test/fuzz/fuzzer.js';
import { knownFinding } from '../test/fuzz/known-findings.js';
import { FUZZ_TARGETS } from '../test/fuzz/targets.js';

function positiveInteger(value: string): number {
  const number = Number(value);
  if (!Number.isSafeInteger(number) || number < 1) throw new InvalidArgumentError('not a positive integer');
  return number;
}

const program = new Command('fuzz')
  .description('fuzz every decoder of outside bytes; JSON on stdout')
  .option('--iterations <n>', 'inputs per target (default: FUZZ_ITERATIONS, else 100000)', positiveInteger)
  .option('--seed <n>', 'seed of the inputs (the same seed gives the same inputs)', positiveInteger, DEFAULT_OPTIONS.seed)
  .option('--target <name...>', `only these targets: ${FUZZ_TARGETS.map((target) => target.name).join(', ')}`)
  .option('--timeout-ms <n>', 'time bound per input', positiveInteger, DEFAULT_OPTIONS.timeoutMs)
  .parse();

const options = program.opts<{ iterations?: number; seed: number; target?: string[]; timeoutMs: number }>();
const iterations = options.iterations ?? (process.env['FUZZ_ITERATIONS'] ? positiveInteger(process.env['FUZZ_ITERATIONS']) : DEFAULT_OPTIONS.iterations);
const unknown = (options.target ?? []).filter((name) => !FUZZ_TARGETS.some((target) => target.name === name));
if (unknown.length > 0) program.error(`no fuzz target ${unknown.join(', ')}`);
const targets = FUZZ_TARGETS.filter((target) => !options.target || options.target.includes(target.name));

const reports: Array<TargetReport & { knownFailures: number; newFailures: number }> = [];
// a target whose run itself broke (its scratch directory, say) is reported and the others still run
const broken: Array<{ target: string; error: string }> = [];
for (const target of targets) {
  try {
    const report = await fuzzTarget(target, { iterations, seed: options.seed, timeoutMs: options.timeoutMs });
    const known = Object.entries(report.failureKinds).filter(([kind]) => knownFinding(target.name, kind)).reduce((sum, [, n]) => sum + n, 0);
    reports.push({ ...report, knownFailures: known, newFailures: report.failures - known });
    process.stderr.write(
      `${report.target.padEnd(20)} ${String(report.inputs).padStart(8)} inputs ${String(report.inputsPerSecond).padStart(8)}/s ${String(report.failures - known).padStart(6)} new failures${known ? ` (and ${known} known)` : ''}\n`,
    );
  } catch (error) {
    broken.push({ target: target.name, error: error instanceof Error ? `${error.name}: ${error.message}` : String(error) });
    process.stderr.write(`${target.name.padEnd(20)} the run broke: ${broken[broken.length - 1]!.error}\n`);
  }
}
const newFailures = reports.reduce((sum, report) => sum + report.newFailures, 0) + broken.length;
const knownFailures = reports.reduce((sum, report) => sum + report.knownFailures, 0);
process.stdout.write(`${JSON.stringify({ seed: options.seed, iterationsPerTarget: iterations, newFailures, knownFailures, broken, targets: reports }, null, 2)}\n`);
process.exitCode = newFailures === 0 ? 0 : 1;
