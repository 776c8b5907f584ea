import { describe, expect, it } from 'vitest';
import {
  Command,
  HEADER_SIZE,
  MAX_PAGES_PER_COMMAND,
  PageFlag,
  PageServerProtocolError,
  decodeHeader,
  decodeTarget,
  detectHeaderLayout,
  encodeHeader,
  encodeTarget,
  parseCommand,
  type HeaderLayout,
  type RawHeader,
} from '../../src/criu/page-server/protocol.js';
import { headerLayoutFor, parseCriuVersion } from '../../src/criu/run/criu-version.js';

const LAYOUTS: HeaderLayout[] = ['criu-4.1', 'criu-4.2'];
const addPresent = (flags: number): number => (flags << 16) | Command.ADD_F;

describe('page-server headers', () => {
  it('are 24 bytes up to CRIU 4.1 and 32 bytes from 4.2, picked from the CRIU version', () => {
    expect(HEADER_SIZE).toEqual({ 'criu-4.1': 24, 'criu-4.2': 32 });
    expect(headerLayoutFor(parseCriuVersion('Version: 4.1.1\n'))).toBe('criu-4.1');
    expect(headerLayoutFor(parseCriuVersion('Version: 3.17.1\n'))).toBe('criu-4.1');
    expect(headerLayoutFor(parseCriuVersion('Version: 4.2\nGitID: v4.2-58-gb5d531eb4\n'))).toBe('criu-4.2');
    expect(() => parseCriuVersion('criu: command not found')).toThrow(/cannot read a CRIU version/);
  });

  it('encode ADD_F|PRESENT of two pages at 0x7f0000000000 byte for byte as CRIU does', () => {
    const header: RawHeader = { cmd: addPresent(PageFlag.PRESENT), nrPages: 2n, vaddr: 0x7f0000000000n, dstId: 0x101n };
    expect(encodeHeader(header, 'criu-4.1').toString('hex')).toBe(
      '06000400' + '02000000' + '00000000007f0000' + '0101000000000000',
    );
    expect(encodeHeader(header, 'criu-4.2').toString('hex')).toBe(
      '06000400' + '00000000' + '0200000000000000' + '00000000007f0000' + '0101000000000000',
    );
  });

  it('decode what they encode in both layouts, and ignore 4.2 padding', () => {
    const header: RawHeader = { cmd: addPresent(PageFlag.PRESENT | PageFlag.LAZY), nrPages: 1024n, vaddr: 0x55d0c0de0000n, dstId: encodeTarget({ type: 'pid', id: 4242 }) };
    for (const layout of LAYOUTS) expect(decodeHeader(encodeHeader(header, layout), layout)).toEqual(header);
    const padded = encodeHeader(header, 'criu-4.2');
    padded.writeUInt32LE(0xdeadbeef, 4);
    expect(decodeHeader(padded, 'criu-4.2')).toEqual(header);
  });

  it('refuse a page count that a 24-byte header cannot carry', () => {
    expect(() => encodeHeader({ cmd: Command.GET, nrPages: 1n << 32n, vaddr: 0n, dstId: 1n }, 'criu-4.1')).toThrow(PageServerProtocolError);
  });
});

describe('dst_id', () => {
  it('names a task pagemap or a shmem pagemap, as (id << 8) | type', () => {
    expect(encodeTarget({ type: 'pid', id: 1 })).toBe(0x101n);
    expect(encodeTarget({ type: 'shmem', id: 1848 })).toBe((1848n << 8n) | 2n);
    expect(decodeTarget(0x101n)).toEqual({ type: 'pid', id: 1 });
    expect(decodeTarget((1848n << 8n) | 2n)).toEqual({ type: 'shmem', id: 1848 });
  });

  it('accepts the type numbers of older CRIUs and rejects unknown ones', () => {
    expect(decodeTarget((7n << 8n) | 10n)).toEqual({ type: 'pid', id: 7 });
    expect(decodeTarget((7n << 8n) | 27n)).toEqual({ type: 'shmem', id: 7 });
    expect(() => decodeTarget((7n << 8n) | 3n)).toThrow(/unknown pagemap type 3/);
    expect(() => decodeTarget(0xffffffffffffff01n)).toThrow(/out of range/);
  });
});

describe('commands', () => {
  const raw = (cmd: number, nrPages = 0n, vaddr = 0n, dstId = 0x101n): RawHeader => ({ cmd, nrPages, vaddr, dstId });

  it('mean what CRIU means by them', () => {
    expect(parseCommand(raw(Command.OPEN2))).toEqual({ kind: 'open', target: { type: 'pid', id: 1 }, wantsReply: true });
    expect(parseCommand(raw(Command.OPEN))).toMatchObject({ kind: 'open', wantsReply: false });
    expect(parseCommand(raw(Command.PARENT))).toEqual({ kind: 'parent', target: { type: 'pid', id: 1 } });
    expect(parseCommand(raw(addPresent(PageFlag.PRESENT | PageFlag.LAZY), 3n, 0x1000n))).toEqual({
      kind: 'add', target: { type: 'pid', id: 1 }, vaddr: 0x1000n, nrPages: 3, flags: PageFlag.PRESENT | PageFlag.LAZY,
    });
    // the legacy ADD and HOLE are ADD_F with PRESENT and PARENT
    expect(parseCommand(raw(Command.ADD, 1n))).toMatchObject({ kind: 'add', flags: PageFlag.PRESENT });
    expect(parseCommand(raw(Command.HOLE, 1n))).toMatchObject({ kind: 'add', flags: PageFlag.PARENT });
    // GET names the plain pid, not a type-encoded dst_id
    expect(parseCommand(raw(Command.GET, 16n, 0x7f000n, 4242n))).toEqual({ kind: 'get', pid: 4242, vaddr: 0x7f000n, nrPages: 16 });
    expect(parseCommand(raw(Command.CLOSE))).toEqual({ kind: 'close', force: false });
    expect(parseCommand(raw(Command.FORCE_CLOSE))).toEqual({ kind: 'close', force: true });
  });

  it('refuse what CRIU would refuse, and what no CRIU sends', () => {
    const refused = (header: RawHeader, why: RegExp): void => {
      expect(() => parseCommand(header)).toThrow(PageServerProtocolError);
      expect(() => parseCommand(header)).toThrow(why);
    };
    refused(raw(0x99), /unknown page-server command 0x99/);
    refused(raw((PageFlag.PRESENT << 16) | Command.OPEN2), /only ADD_F may/);
    refused(raw(addPresent(0x8)), /page flags 0x8/);
    refused(raw(addPresent(PageFlag.PRESENT), BigInt(MAX_PAGES_PER_COMMAND) + 1n), /more than/);
    refused(raw(addPresent(PageFlag.PRESENT), 0xffffffffffffffffn), /more than/);
    refused(raw(addPresent(PageFlag.PRESENT), 1n, 0x1008n), /not page-aligned/);
    refused(raw(Command.GET, 1n, 0x7f001n, 4242n), /not page-aligned/);
    refused(raw(Command.GET, 0n, 0x1000n, 7n), /zero pages/);
    refused(raw(Command.GET, 1n, 0x1000n, 0n), /GET for pid 0/);
  });
});

describe('layout detection (only when the peer\'s CRIU version is unknown)', () => {
  it('tells the layouts apart from a dump\'s first OPEN2 and from a lazy daemon\'s first GET', () => {
    const open2: RawHeader = { cmd: Command.OPEN2, nrPages: 0n, vaddr: 0n, dstId: 0x3a901n };
    const get: RawHeader = { cmd: Command.GET, nrPages: 16n, vaddr: 0x7f1234560000n, dstId: 4242n };
    for (const layout of LAYOUTS) {
      expect(detectHeaderLayout(encodeHeader(open2, layout).subarray(0, 24))).toBe(layout);
      expect(detectHeaderLayout(encodeHeader(get, layout).subarray(0, 24))).toBe(layout);
    }
    expect(() => detectHeaderLayout(encodeHeader({ cmd: Command.CLOSE, nrPages: 0n, vaddr: 0n, dstId: 0n }, 'criu-4.1'))).toThrow(/cannot tell/);
  });
});
