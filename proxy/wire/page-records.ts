import type { StreamReader } from '../../src/streams/stream-reader.js';
import { MigrationMessageError, decodePageRun, encodePageRun, type PageRun } from './messages.js';

export type { PageRun };

/**
 * A PageRun encodes in at most 22 bytes (four varints); a length byte above this is not a record
 * any haul writes.
 */
const MAX_RECORD = 32;

/** `run` as a record: its length in one byte, then the message. */
export function pageRunRecord(run: Partial<PageRun> & Pick<PageRun, 'vaddr' | 'nr_pages'>): Buffer {
  const message = encodePageRun({ flags: 0, pid: 0, again: false, ...run });
  return Buffer.concat([Buffer.from([message.length]), message]);
}

/** The next record from `reader`, or null where the stream ends cleanly before one. */
export async function readPageRun(reader: StreamReader, what: string): Promise<PageRun | null> {
  const length = await reader.readExactly(1, what);
  if (length === null) return null;
  const size = length[0]!;
  if (size > MAX_RECORD) throw new MigrationMessageError(`${what} of ${size} bytes: no haul writes one above ${MAX_RECORD}`);
  const body = size === 0 ? Buffer.alloc(0) : await reader.readExactly(size, what);
  if (body === null) throw new MigrationMessageError(`${what} cut short`);
  return decodePageRun(body);
}
