import { closeSync, openSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { fuzzTarget, type FindingKind, type FuzzTarget } from './fuzzer.js';

class Refused extends Error {}

/** A decoder of `{u32 length, bytes}` that is broken in the way `flaw` says, on inputs that reach it. */
function flawedTarget(flaw: (length: number, input: Buffer) => unknown): FuzzTarget {
  const seed = Buffer.alloc(12);
  seed.writeUInt32LE(8, 0);
  return {
    name: 'flawed',
    decoder: 'a decoder broken on purpose',
    expected: [Refused],
    seeds: () => [seed],
    run(input) {
      if (input.length < 4) throw new Refused('short');
      const length = input.readUInt32LE(0);
      if (length === 8 && input.length === 12) return 'valid';
      return flaw(length, input);
    },
  };
}

/** `timeoutMs`: short only where a hang is the finding looked for; a busy machine stalls for longer. */
async function kindsFound(target: FuzzTarget, iterations = 300, timeoutMs = 5000): Promise<Set<FindingKind>> {
  const report = await fuzzTarget(target, { iterations, timeoutMs });
  return new Set(report.findings.map((finding) => finding.kind));
}

describe('the fuzzer tells each way a decoder can fail', () => {
  it('accepts a decoder that only returns or refuses with its own error', async () => {
    const report = await fuzzTarget(flawedTarget(() => Promise.reject(new Refused('bad'))), { iterations: 300, timeoutMs: 5000 });
    expect(report.failures).toBe(0);
    expect(report.accepted).toBeGreaterThan(0);
    expect(report.rejected).toBeGreaterThan(0);
  });

  it('a crash: an error of another class', async () => {
    expect(await kindsFound(flawedTarget((_length, input) => (input as unknown as { no: { such: 1 } }).no.such))).toEqual(new Set(['crash']));
  });

  it('an allocation over the bound: a length believed, refused before it is made', async () => {
    const report = await fuzzTarget(flawedTarget((length) => Buffer.alloc(length)), { iterations: 300 });
    expect(new Set(report.findings.map((finding) => finding.kind))).toContain('allocation');
    expect(report.largestAllocation).toBeLessThanOrEqual(1024 * 1024 + 8 * 200);
  });

  it('a hang: a promise that never settles', async () => {
    expect(await kindsFound(flawedTarget(() => new Promise(() => {})), 40, 20)).toEqual(new Set(['hang']));
  });

  it('an unhandled error: one that escapes the promise, later', async () => {
    expect(await kindsFound(flawedTarget(() => {
      setImmediate(() => Promise.reject(new Refused('nobody listens')));
      return 'seemingly fine';
    }))).toContain('unhandled');
  });

  it('a leak: a file descriptor left open', async () => {
    const opened: number[] = [];
    const report = await fuzzTarget(flawedTarget(() => opened.push(openSync('/dev/null', 'r'))), { iterations: 600, timeoutMs: 5000 });
    opened.forEach((fd) => closeSync(fd));
    expect(new Set(report.findings.map((finding) => finding.kind))).toEqual(new Set(['leak']));
  });

  it('gives the same inputs for the same seed', async () => {
    const seen: string[][] = [[], []];
    for (const run of [0, 1]) {
      await fuzzTarget({ ...flawedTarget(() => 'any'), run: (input) => void seen[run]!.push(input.toString('hex')) }, { iterations: 100, seed: 7 });
    }
    expect(seen[0]).toEqual(seen[1]);
    expect(new Set(seen[0]).size).toBeGreaterThan(50);
  });
});
