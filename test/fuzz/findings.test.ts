import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { HookProtocolError, parseHookRequest } from '../../plugin/hook-protocol.js';
import { LazyWireError, readPageRequests, readPages } from '../../proxy/lazy-wire.js';

async function drain(records: AsyncIterable<object>): Promise<void> {
  for await (const record of records) for await (const chunk of (record as { pages?: AsyncIterable<Buffer> }).pages ?? []) void chunk;
}

/** Each failure the fuzzer found and this change fixed, replayed from its input. */
describe('fuzz findings, fixed', () => {
  describe("the agent's hook requests are checked before a role gets them", () => {
    it('takes the request as the hook writes it', () => {
      expect(parseHookRequest('{"call":"restore","pid":812,"args":["restore","-D","/tmp/a \\"dir\\"\\u000a"]}')).toEqual({ call: 'restore', pid: 812, args: ['restore', '-D', '/tmp/a "dir"\n'] });
      expect(parseHookRequest('{"call":"dump","args":[]}')).toEqual({ call: 'dump', args: [] });
    });

    it('refuses a call other than dump or restore, which the agent used to hand to the destination role as a restore', () => {
      expect(() => parseHookRequest('{"call":"check","pid":1,"args":["check"]}')).toThrow(HookProtocolError);
    });

    it('refuses what is not a list of string arguments or a process id', () => {
      for (const line of ['', 'null', '[]', '"dump"', '{"call":"dump"}', '{"call":"dump","args":"-D /"}', '{"call":"dump","args":[1]}', '{"call":"dump","args":[],"pid":-1}', '{"call":"dump","args":[],"pid":1.5}', '{"call":"dump","args":[],"pid":"1"}']) {
        expect(() => parseHookRequest(line), line).toThrow(HookProtocolError);
      }
    });
  });

  describe('a lazy page record of a page count CRIU never asks for is refused with an error of the lazy wire', () => {
    // lazy-wire target, seed 1: the record {pid 7, 33686018 pages} ended in a plain Error
    for (const hex of ['07000000000000000000010000000000', '07000000020202020000010000000000', '07000000010400000000010000000000']) {
      it(`record ${hex}`, async () => {
        await expect(drain(readPageRequests(Readable.from([Buffer.from(hex, 'hex')])))).rejects.toBeInstanceOf(LazyWireError);
        await expect(drain(readPages(Readable.from([Buffer.from(hex, 'hex')])))).rejects.toBeInstanceOf(LazyWireError);
      });
    }
  });
});
