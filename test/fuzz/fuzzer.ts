import { readdirSync } from 'node:fs';
import { AllocationGuard } from './allocation-guard.js';
import { mutatedInput, random, type Random } from './mutations.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type ErrorClass = abstract new (...args: any[]) => Error;

/** A target's own check on a decoded value failed: the decoder accepted what it must not. */
export class InvariantBroken extends Error {
  override readonly name = 'InvariantBroken';
}

/** One decoder of outside bytes, with the valid inputs its mutations start from. */
export interface FuzzTarget {
  readonly name: string;
  /** What is fed, to which function. */
  readonly decoder: string;
  /** The errors a refused input may end in; anything else is a crash. */
  readonly expected: readonly ErrorClass[];
  /** Valid inputs, made with the project's own encoders. */
  seeds(): Buffer[];
  /**
   * Repairs, on some inputs, what a mutation broke that would stop every input at the first check
   * (a CRC, a length prefix), so mutations reach the checks behind it.
   */
  repair?(input: Buffer, random: Random): Buffer;
  /** Feeds one input; resolves with what it decoded, or throws why it refused it. */
  run(input: Buffer, random: Random): unknown;
  /** Sets up what run needs (a scratch directory), once per fuzzing run. */
  open?(): Promise<void>;
  close?(): Promise<void>;
}

export type FindingKind = 'crash' | 'hang' | 'allocation' | 'invariant' | 'unhandled' | 'leak';

export interface Finding {
  readonly target: string;
  readonly iteration: number;
  readonly kind: FindingKind;
  readonly error: string;
  readonly inputHex: string;
}

export interface TargetReport {
  readonly target: string;
  readonly decoder: string;
  readonly inputs: number;
  readonly accepted: number;
  readonly rejected: number;
  readonly failures: number;
  readonly seconds: number;
  readonly inputsPerSecond: number;
  /** The largest single Buffer allocation made while an input was decoded (refused ones aside). */
  readonly largestAllocation: number;
  /** How many failures of each kind (`kind ErrorName: the message's start, digits as N`). */
  readonly failureKinds: Readonly<Record<string, number>>;
  /** The first findings of each kind, with the input that caused them. */
  readonly findings: readonly Finding[];
}

export interface FuzzOptions {
  readonly iterations: number;
  readonly seed: number;
  /** One input must be decided within this long. */
  readonly timeoutMs: number;
  /** No single allocation may be larger than this, plus `allocationPerInputByte` per input byte. */
  readonly allocationLimit: number;
  readonly allocationPerInputByte: number;
  /** Findings kept per failure kind, and in all. */
  readonly examplesPerFinding: number;
  readonly examples: number;
}

export const DEFAULT_OPTIONS: FuzzOptions = {
  iterations: 100_000,
  seed: 1,
  timeoutMs: 1000,
  allocationLimit: 1024 * 1024,
  allocationPerInputByte: 8,
  examplesPerFinding: 3,
  examples: 40,
};

/** What tells failures apart: the kind, the error's name and the start of its message, numbers left out. */
export function failureKind(kind: FindingKind, error: string): string {
  return `${kind} ${error.replace(/0x[0-9a-f]+|\d+/gi, 'N').slice(0, 120)}`;
}

/** A stable per-target seed, so adding a target does not change the inputs of the others. */
function targetSeed(name: string, seed: number): number {
  let hash = 0x811c9dc5 ^ seed;
  for (const char of name) hash = Math.imul(hash ^ char.charCodeAt(0), 0x01000193);
  return hash >>> 0 || 1;
}

const HANG = Symbol('hang');

/** Inputs between two counts of the open file descriptors, and how many more may be open. */
const DESCRIPTOR_CHECK_EVERY = 256;
const DESCRIPTOR_SLACK = 64;

/** The process's open file descriptors (Linux), or undefined where /proc does not tell. */
function openDescriptors(): number | undefined {
  try {
    return readdirSync('/proc/self/fd').length;
  } catch {
    return undefined;
  }
}

function describeError(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`.slice(0, 300);
  return `non-error thrown: ${String(error)}`.slice(0, 300);
}

/**
 * Feeds `target` `options.iterations` mutated inputs, one at a time. Each must end within the time
 * bound, either accepted or refused with one of the target's expected errors, without a Buffer
 * allocation over the bound and without an error escaping as an uncaught exception or an unhandled
 * rejection, and without leaving file descriptors open. The same options give the same inputs.
 * A synchronous decoder that never returns cannot be interrupted here: the caller's own timeout
 * (vitest's) is what ends it.
 */
export async function fuzzTarget(target: FuzzTarget, overrides: Partial<FuzzOptions> = {}): Promise<TargetReport> {
  const options = { ...DEFAULT_OPTIONS, ...overrides };
  const choose = random(targetSeed(target.name, options.seed));
  const guard = new AllocationGuard();
  const findings: Finding[] = [];
  const seen = new Map<string, number>();
  let failures = 0;
  let accepted = 0;
  let rejected = 0;
  let largestAllocation = 0;
  let iteration = 0;
  let input: Buffer = Buffer.alloc(0);

  const record = (kind: FindingKind, error: string, at = iteration, bytes = input): void => {
    failures++;
    const key = failureKind(kind, error);
    const count = seen.get(key) ?? 0;
    seen.set(key, count + 1);
    if (count < options.examplesPerFinding && findings.length < options.examples) findings.push({ target: target.name, iteration: at, kind, error, inputHex: bytes.toString('hex') });
  };
  await target.open?.();
  const corpus = target.seeds();
  if (corpus.length === 0) {
    await target.close?.();
    throw new Error(`fuzz target ${target.name} has no seeds`);
  }
  // an input must not leave a descriptor open (a file or stream a refusal forgot to close): counted
  // now and then, since most inputs open none; the charge goes to the input that crossed the slack
  let descriptors = openDescriptors();
  // an error that escapes the decoder's promise (a stream without an 'error' listener) would end the
  // process: it is a finding, charged to the input being decoded when it surfaced. The listeners
  // already there (a test runner's) are set aside meanwhile: the finding is reported here, with its
  // input
  const onUncaught = (error: unknown): void => record('unhandled', describeError(error));
  type Listener = (...args: unknown[]) => void;
  const setAside = (['uncaughtException', 'unhandledRejection'] as const).map((event) => {
    const listeners = process.listeners(event as 'uncaughtException') as Listener[];
    process.removeAllListeners(event);
    process.on(event as 'uncaughtException', onUncaught);
    return { event, listeners };
  });
  guard.install();
  const started = process.hrtime.bigint();
  try {
    for (iteration = 0; iteration < options.iterations; iteration++) {
      input = mutatedInput(corpus, choose);
      if (target.repair && choose.chance(0.5)) input = target.repair(input, choose);
      const limit = options.allocationLimit + options.allocationPerInputByte * input.length;
      let timer: NodeJS.Timeout | undefined;
      let outcome: 'accepted' | 'rejected' | typeof HANG;
      guard.begin(limit);
      const inputStarted = Date.now();
      try {
        const result = target.run(input, choose);
        if (result instanceof Promise) {
          const hang = new Promise<typeof HANG>((resolve) => (timer = setTimeout(() => resolve(HANG), options.timeoutMs)));
          result.catch(() => {}); // a hang's late rejection is not an unhandled one
          outcome = (await Promise.race([result.then(() => 'accepted' as const), hang])) as 'accepted' | typeof HANG;
        } else {
          outcome = 'accepted';
        }
        if (outcome === HANG) record('hang', `no answer within ${options.timeoutMs} ms`);
      } catch (error) {
        outcome = 'rejected';
        if (error instanceof InvariantBroken) record('invariant', describeError(error));
        else if (!target.expected.some((kind) => error instanceof kind)) record('crash', describeError(error));
      } finally {
        clearTimeout(timer);
      }
      const allocations = guard.end();
      largestAllocation = Math.max(largestAllocation, allocations.largest);
      if (allocations.refused !== undefined) record('allocation', `asked for ${allocations.refused} bytes at once, the bound is ${limit}`);
      else if (allocations.total > 8 * limit) record('allocation', `allocated ${allocations.total} bytes in all, the bound is ${8 * limit}`);
      if (outcome !== HANG && Date.now() - inputStarted > options.timeoutMs) record('hang', `took ${Date.now() - inputStarted} ms`);
      if (outcome === 'accepted') accepted++;
      else if (outcome === 'rejected') rejected++;
      if (descriptors !== undefined && iteration % DESCRIPTOR_CHECK_EVERY === DESCRIPTOR_CHECK_EVERY - 1) {
        const now = openDescriptors() ?? descriptors;
        if (now > descriptors + DESCRIPTOR_SLACK) {
          record('leak', `${now - descriptors} more file descriptors open than ${DESCRIPTOR_CHECK_EVERY} inputs before`);
          descriptors = now;
        }
      }
    }
  } finally {
    guard.uninstall();
    // what an input left running may still fail on a later turn of the event loop
    await new Promise((resolve) => setImmediate(resolve));
    for (const { event, listeners } of setAside) {
      process.off(event as 'uncaughtException', onUncaught);
      for (const listener of listeners) process.on(event as 'uncaughtException', listener);
    }
    await target.close?.();
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return {
    target: target.name,
    decoder: target.decoder,
    inputs: options.iterations,
    accepted,
    rejected,
    failures,
    seconds: Math.round(seconds * 1000) / 1000,
    inputsPerSecond: Math.round(options.iterations / seconds),
    largestAllocation,
    failureKinds: Object.fromEntries(seen),
    findings,
  };
}
