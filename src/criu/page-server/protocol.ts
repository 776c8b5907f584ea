/**
 * CRIU's page-server wire format (criu/page-xfer.c, criu/include/pagemap.h): a fixed-size header per
 * command, host byte order, no framing, no version field. Decoding turns header bytes into typed
 * commands once, here; everything downstream works on those.
 */

export const PAGE_SIZE = 4096;

/** `cmd & 0xffff` (criu/page-xfer.c PS_IOV_*). */
export const Command = {
  ADD: 1,
  HOLE: 2,
  OPEN: 3,
  OPEN2: 4,
  PARENT: 5,
  ADD_F: 6,
  GET: 7,
  CLOSE: 0x1023,
  FORCE_CLOSE: 0x1024,
} as const;

/** Page flags, the high 16 bits of an ADD_F command (criu/include/pagemap.h PE_*). */
export const PageFlag = { PARENT: 1, LAZY: 2, PRESENT: 4 } as const;
const KNOWN_FLAGS = PageFlag.PARENT | PageFlag.LAZY | PageFlag.PRESENT;

/**
 * The header layout. CRIU ≤ 4.1 sends `{u32 cmd; u32 nr_pages; u64 vaddr; u64 dst_id}` (24 bytes);
 * 4.2 widened nr_pages to u64, which with alignment makes `{u32 cmd; u32 pad; u64 nr_pages; u64 vaddr;
 * u64 dst_id}` (32 bytes). Nothing on the wire says which one a peer uses.
 */
export type HeaderLayout = 'criu-4.1' | 'criu-4.2';
export const HEADER_SIZE: Record<HeaderLayout, number> = { 'criu-4.1': 24, 'criu-4.2': 32 };

/**
 * The most pages one command may carry. CRIU sends at most a page pipe's worth per command; this bound
 * (64 GiB) only stops a hostile header from promising an absurd stream.
 */
export const MAX_PAGES_PER_COMMAND = 1 << 24;

/** A pagemap a command writes to: a task's (`pagemap-<pid>.img`) or a shared memory segment's. */
export interface PagemapTarget {
  readonly type: 'pid' | 'shmem';
  readonly id: number;
}

/** A decoded command, as the dump (or the lazy-pages daemon) sent it. */
export type PageServerCommand =
  | { readonly kind: 'open'; readonly target: PagemapTarget; readonly wantsReply: boolean }
  | { readonly kind: 'parent'; readonly target: PagemapTarget }
  | { readonly kind: 'add'; readonly target: PagemapTarget; readonly vaddr: bigint; readonly nrPages: number; readonly flags: number }
  | { readonly kind: 'get'; readonly pid: number; readonly vaddr: bigint; readonly nrPages: number }
  | { readonly kind: 'close'; readonly force: boolean };

export class PageServerProtocolError extends Error {
  override readonly name = 'PageServerProtocolError';
}

/** The raw header fields, before they mean anything. */
export interface RawHeader {
  readonly cmd: number;
  readonly nrPages: bigint;
  readonly vaddr: bigint;
  readonly dstId: bigint;
}

export function decodeHeader(bytes: Buffer, layout: HeaderLayout): RawHeader {
  if (bytes.length !== HEADER_SIZE[layout]) {
    throw new PageServerProtocolError(`a ${layout} header is ${HEADER_SIZE[layout]} bytes, got ${bytes.length}`);
  }
  return layout === 'criu-4.1'
    ? { cmd: bytes.readUInt32LE(0), nrPages: BigInt(bytes.readUInt32LE(4)), vaddr: bytes.readBigUInt64LE(8), dstId: bytes.readBigUInt64LE(16) }
    : { cmd: bytes.readUInt32LE(0), nrPages: bytes.readBigUInt64LE(8), vaddr: bytes.readBigUInt64LE(16), dstId: bytes.readBigUInt64LE(24) };
}

export function encodeHeader(header: RawHeader, layout: HeaderLayout): Buffer {
  const bytes = Buffer.alloc(HEADER_SIZE[layout]);
  bytes.writeUInt32LE(header.cmd, 0);
  if (layout === 'criu-4.1') {
    if (header.nrPages > 0xffffffffn) throw new PageServerProtocolError(`${header.nrPages} pages do not fit a criu-4.1 header`);
    bytes.writeUInt32LE(Number(header.nrPages), 4);
    bytes.writeBigUInt64LE(header.vaddr, 8);
    bytes.writeBigUInt64LE(header.dstId, 16);
  } else {
    bytes.writeBigUInt64LE(header.nrPages, 8);
    bytes.writeBigUInt64LE(header.vaddr, 16);
    bytes.writeBigUInt64LE(header.dstId, 24);
  }
  return bytes;
}

// dst_id = (id << 8) | type (PS_TYPE_BITS); decode_pm() in criu/page-xfer.c also takes the type
// numbers of CRIUs before 2.x, so a proxy must as well.
const PID_TYPES = new Set([1, 10, 11, 16, 17]);
const SHMEM_TYPES = new Set([2, 27, 28, 29, 32, 33, 34]);

export function decodeTarget(dstId: bigint): PagemapTarget {
  const type = Number(dstId & 0xffn);
  const id = dstId >> 8n;
  if (id > 0xffffffffn) throw new PageServerProtocolError(`pagemap id ${id} is out of range`);
  if (PID_TYPES.has(type)) return { type: 'pid', id: Number(id) };
  if (SHMEM_TYPES.has(type)) return { type: 'shmem', id: Number(id) };
  throw new PageServerProtocolError(`unknown pagemap type ${type} in dst_id 0x${dstId.toString(16)}`);
}

export function encodeTarget(target: PagemapTarget): bigint {
  return (BigInt(target.id) << 8n) | (target.type === 'pid' ? 1n : 2n);
}

/** CRIU sends pages by whole pages (criu/page-xfer.c, criu/uffd.c): an address inside one is not its. */
function pageAddress(raw: RawHeader): bigint {
  if (raw.vaddr % BigInt(PAGE_SIZE) !== 0n) throw new PageServerProtocolError(`address 0x${raw.vaddr.toString(16)} is not page-aligned`);
  return raw.vaddr;
}

function pageCount(raw: RawHeader): number {
  if (raw.nrPages > BigInt(MAX_PAGES_PER_COMMAND)) {
    throw new PageServerProtocolError(`${raw.nrPages} pages in one command is more than ${MAX_PAGES_PER_COMMAND}`);
  }
  return Number(raw.nrPages);
}

/** Gives a header its meaning, or says why it has none. */
export function parseCommand(raw: RawHeader): PageServerCommand {
  const op = raw.cmd & 0xffff;
  const flags = raw.cmd >>> 16;
  if (op !== Command.ADD_F && flags !== 0) {
    throw new PageServerProtocolError(`command ${op} carries flags 0x${flags.toString(16)}; only ADD_F may`);
  }
  switch (op) {
    case Command.OPEN:
    case Command.OPEN2:
      return { kind: 'open', target: decodeTarget(raw.dstId), wantsReply: op === Command.OPEN2 };
    case Command.PARENT:
      return { kind: 'parent', target: decodeTarget(raw.dstId) };
    case Command.ADD:
    case Command.HOLE:
    case Command.ADD_F: {
      const pageFlags = op === Command.ADD ? PageFlag.PRESENT : op === Command.HOLE ? PageFlag.PARENT : flags;
      if ((pageFlags & ~KNOWN_FLAGS) !== 0 || pageFlags === 0) {
        throw new PageServerProtocolError(`ADD_F with page flags 0x${pageFlags.toString(16)}`);
      }
      return { kind: 'add', target: decodeTarget(raw.dstId), vaddr: pageAddress(raw), nrPages: pageCount(raw), flags: pageFlags };
    }
    case Command.GET: {
      // for GET, dst_id is the plain virtual pid, not type-encoded (criu/uffd.c)
      if (raw.dstId === 0n || raw.dstId > 0x7fffffffn) throw new PageServerProtocolError(`GET for pid ${raw.dstId}`);
      const nrPages = pageCount(raw);
      if (nrPages === 0) throw new PageServerProtocolError('GET of zero pages');
      return { kind: 'get', pid: Number(raw.dstId), vaddr: pageAddress(raw), nrPages };
    }
    case Command.CLOSE:
    case Command.FORCE_CLOSE:
      return { kind: 'close', force: op === Command.FORCE_CLOSE };
    default:
      throw new PageServerProtocolError(`unknown page-server command 0x${raw.cmd.toString(16)}`);
  }
}

/**
 * Guesses the layout from the first 24 bytes a peer sent, for when its CRIU version is not known
 * (the version, exchanged out of band, is the reliable way). A dump starts with OPEN2 or PARENT,
 * whose vaddr is 0: in the 32-byte layout that zero sits at offset 16, where the 24-byte layout has
 * a non-zero dst_id. A lazy-pages client starts with GET: the 32-byte layout has the page count at
 * offset 8 (at most 1024, criu/uffd.c MAX_XFER_LEN), the 24-byte one a page-aligned address.
 */
export function detectHeaderLayout(first: Buffer): HeaderLayout {
  if (first.length < 24) throw new PageServerProtocolError(`need 24 bytes to tell the header layout, got ${first.length}`);
  const op = first.readUInt32LE(0) & 0xffff;
  if (op === Command.OPEN || op === Command.OPEN2 || op === Command.PARENT) {
    return first.readBigUInt64LE(16) === 0n ? 'criu-4.2' : 'criu-4.1';
  }
  if (op === Command.GET) return first.readBigUInt64LE(8) < 4096n ? 'criu-4.2' : 'criu-4.1';
  throw new PageServerProtocolError(`cannot tell the header layout from a first command 0x${op.toString(16)}`);
}

/** The header of an ADD_F|PRESENT answer to a GET, which echoes the request's vaddr and pid. */
export function pagesAnswerHeader(pid: number, vaddr: bigint, nrPages: number): RawHeader {
  return { cmd: (PageFlag.PRESENT << 16) | Command.ADD_F, nrPages: BigInt(nrPages), vaddr, dstId: BigInt(pid) };
}

/** A 4-byte native int, the answer to PARENT and to CLOSE. */
export function int32Reply(value: number): Buffer {
  const bytes = Buffer.alloc(4);
  bytes.writeInt32LE(value, 0);
  return bytes;
}
