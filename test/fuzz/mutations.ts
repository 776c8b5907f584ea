import { seededRandom } from '../support/seeded-random.js';

/** A seeded source of choices: the same seed gives the same inputs, so a finding replays. */
export interface Random {
  /** An integer in [0, n). */
  below(n: number): number;
  chance(probability: number): boolean;
  pick<T>(items: readonly T[]): T;
  bytes(length: number): Buffer;
}

export function random(seed: number): Random {
  const next = seededRandom(seed);
  const below = (n: number): number => Math.floor(next() * n);
  return {
    below,
    chance: (probability) => next() < probability,
    pick: (items) => items[below(items.length)]!,
    bytes: (length) => {
      const bytes = Buffer.allocUnsafe(length);
      for (let i = 0; i < length; i++) bytes[i] = below(256);
      return bytes;
    },
  };
}

// the values length and count fields go wrong with: zero, one, sign and width boundaries, page and
// frame sizes, and all ones (a 4 GiB or 16 EiB length)
const EXTREME_32 = [0, 1, 0xff, 0x1000, 0x10000, 0x100000, 0x100001, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
const EXTREME_64 = [0n, 1n, 0xffffffffn, 0x100000000n, 0x20000000000000n, 0x7fffffffffffffffn, 0xffffffffffffffffn];
const EXTREME_8 = [0, 1, 0x7f, 0x80, 0xfe, 0xff];

type Mutation = (input: Buffer, random: Random, corpus: readonly Buffer[]) => Buffer;

/** An offset to write `width` bytes at, aligned like the fields of the formats fuzzed here most of the time. */
function fieldOffset(input: Buffer, width: number, random: Random): number {
  const room = input.length - width + 1;
  const offset = random.below(room);
  return random.chance(0.75) ? offset - (offset % Math.min(width, 4)) : offset;
}

const MUTATIONS: readonly Mutation[] = [
  function flipBits(input, random) {
    const copy = Buffer.from(input);
    for (let n = 1 + random.below(8); n > 0 && copy.length > 0; n--) copy[random.below(copy.length)]! ^= 1 << random.below(8);
    return copy;
  },
  function setExtremeByte(input, random) {
    const copy = Buffer.from(input);
    if (copy.length > 0) copy[random.below(copy.length)] = random.pick(EXTREME_8);
    return copy;
  },
  function setExtreme32(input, random) {
    if (input.length < 4) return input;
    const copy = Buffer.from(input);
    copy.writeUInt32LE(random.pick(EXTREME_32), fieldOffset(copy, 4, random));
    return copy;
  },
  function setExtreme64(input, random) {
    if (input.length < 8) return input;
    const copy = Buffer.from(input);
    copy.writeBigUInt64LE(random.pick(EXTREME_64), fieldOffset(copy, 8, random));
    return copy;
  },
  function insertBytes(input, random) {
    const at = random.below(input.length + 1);
    return Buffer.concat([input.subarray(0, at), random.bytes(1 + random.below(16)), input.subarray(at)]);
  },
  function deleteBytes(input, random) {
    if (input.length === 0) return input;
    const at = random.below(input.length);
    return Buffer.concat([input.subarray(0, at), input.subarray(at + 1 + random.below(Math.min(16, input.length - at)))]);
  },
  function truncate(input, random) {
    return input.subarray(0, random.below(input.length + 1));
  },
  function repeatPart(input, random) {
    if (input.length === 0) return input;
    const at = random.below(input.length);
    const part = input.subarray(at, at + 1 + random.below(Math.min(64, input.length - at)));
    return Buffer.concat([input.subarray(0, at), part, part, input.subarray(at)]);
  },
  function spliceWithAnother(input, random, corpus) {
    const other = random.pick(corpus);
    return Buffer.concat([input.subarray(0, random.below(input.length + 1)), other.subarray(random.below(other.length + 1))]);
  },
  function appendGarbage(input, random) {
    return Buffer.concat([input, random.bytes(1 + random.below(64))]);
  },
];

/**
 * One input derived from the valid `corpus`: mostly one to four stacked mutations of a seed, now
 * and then a seed unchanged (the accepting path must stay exercised) or plain random bytes.
 */
export function mutatedInput(corpus: readonly Buffer[], random: Random): Buffer {
  const roll = random.below(100);
  if (roll < 3) return Buffer.from(random.pick(corpus));
  if (roll < 6) return random.bytes(random.below(128));
  let input = random.pick(corpus);
  for (let n = 1 + random.below(4); n > 0; n--) input = random.pick(MUTATIONS)(input, random, corpus);
  return input;
}

/** Cuts `input` into one to four chunks, as a socket may deliver it; decoders must not care where. */
export function chunked(input: Buffer, random: Random): Buffer[] {
  const cuts = new Set<number>();
  for (let n = random.below(4); n > 0 && input.length > 1; n--) cuts.add(1 + random.below(input.length - 1));
  const chunks: Buffer[] = [];
  let from = 0;
  for (const cut of [...cuts].sort((a, b) => a - b)) {
    chunks.push(input.subarray(from, cut));
    from = cut;
  }
  chunks.push(input.subarray(from));
  return chunks;
}
