import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { StreamReader, TruncatedStreamError } from '../../streams/stream-reader.js';
import { IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, INVENTORY_MAGIC, headerBytes, type ImageHeader } from './magic.js';
import { ImageFormatError } from './schemas.js';

/**
 * The largest entry haul accepts. Real entries are far smaller (an mm entry with ten thousand VMAs
 * is about half a MiB); the bound keeps a hostile length from making haul allocate it.
 */
export const MAX_ENTRY_SIZE = 64 * 1024 * 1024;

function describe(header: ImageHeader): string {
  return header.kind === 'inventory' ? 'inventory' : `${header.kind} image 0x${header.typeMagic.toString(16)}`;
}

/**
 * Reads an image's header and then its u32-length-prefixed entries (criu/image.c, criu/protobuf.c),
 * one at a time, as raw bytes; decoding them is the caller's choice of schema.
 */
export class ImageReader {
  private constructor(
    private readonly reader: StreamReader,
    readonly header: ImageHeader,
    private readonly source: string,
    private readonly stream: Readable,
  ) {}

  /** Reads the header; a refused image's stream is destroyed (a file's descriptor closed). */
  static async open(stream: Readable, source: string, expected?: ImageHeader): Promise<ImageReader> {
    try {
      return await ImageReader.readHeader(new StreamReader(stream), source, stream, expected);
    } catch (error) {
      stream.destroy();
      if (error instanceof TruncatedStreamError) throw new ImageFormatError(`${source}: truncated image header`);
      throw error;
    }
  }

  private static async readHeader(reader: StreamReader, source: string, stream: Readable, expected?: ImageHeader): Promise<ImageReader> {
    const first = await reader.readExactly(4, 'image magic');
    if (first === null) throw new ImageFormatError(`${source}: empty file, not a CRIU image`);
    const magic = first.readUInt32LE(0);
    let header: ImageHeader;
    if (magic === INVENTORY_MAGIC) header = { kind: 'inventory' };
    else if (magic === IMG_COMMON_MAGIC || magic === IMG_SERVICE_MAGIC) {
      const second = await reader.readExactly(4, 'image type magic');
      if (second === null) throw new ImageFormatError(`${source}: ends after its first magic`);
      header = { kind: magic === IMG_COMMON_MAGIC ? 'common' : 'service', typeMagic: second.readUInt32LE(0) };
    } else {
      throw new ImageFormatError(`${source}: magic 0x${magic.toString(16)} is not a CRIU image's`);
    }
    if (expected && describe(expected) !== describe(header)) {
      throw new ImageFormatError(`${source}: wrong magic, expected ${describe(expected)} but found ${describe(header)}`);
    }
    return new ImageReader(reader, header, source, stream);
  }

  static async openFile(path: string, expected?: ImageHeader): Promise<ImageReader> {
    return ImageReader.open(createReadStream(path), path, expected);
  }

  /** The next entry's bytes, or null at the end of the file. */
  async next(): Promise<Buffer | null> {
    const length = await this.read(4, 'a truncated entry length');
    if (length === null) return null;
    const size = length.readUInt32LE(0);
    if (size > MAX_ENTRY_SIZE) throw new ImageFormatError(`${this.source}: entry of ${size} bytes is larger than ${MAX_ENTRY_SIZE}`);
    const entry = await this.read(size, `entry length ${size} runs past the end of the file`);
    if (entry === null) throw new ImageFormatError(`${this.source}: entry length ${size} runs past the end of the file`);
    return entry;
  }

  private async read(size: number, problem: string): Promise<Buffer | null> {
    try {
      return await this.reader.readExactly(size, 'image entry');
    } catch (error) {
      if (error instanceof TruncatedStreamError) throw new ImageFormatError(`${this.source}: ${problem}`);
      throw error;
    }
  }

  async *entries(): AsyncGenerator<Buffer, void, undefined> {
    for (let entry = await this.next(); entry !== null; entry = await this.next()) yield entry;
  }

  /**
   * Stops reading: the stream is destroyed, so a file read only in part (an entry refused, or the
   * rest not wanted) is closed. A stream read to its end closes by itself.
   */
  close(): void {
    this.stream.destroy();
  }
}

/** An image's bytes: its header, then each entry with its u32 length. */
export function encodeImage(header: ImageHeader, entries: readonly Buffer[]): Buffer {
  return Buffer.concat([headerBytes(header), ...entries.flatMap((entry) => [lengthPrefix(entry.length), entry])]);
}

export function lengthPrefix(size: number): Buffer {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32LE(size, 0);
  return bytes;
}
