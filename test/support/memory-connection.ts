import { Duplex, PassThrough, Readable } from 'node:stream';

/**
 * A connection whose peer has already sent `input` and then closed; what the code under test
 * writes back is collected. Stands in for a socket in protocol tests and fuzzing.
 */
export function memoryConnection(input: Buffer | readonly Buffer[]): { connection: Duplex; written(): Buffer } {
  const chunks: Buffer[] = [];
  const outbound = new PassThrough();
  outbound.on('data', (chunk: Buffer) => chunks.push(chunk));
  const connection = Duplex.from({ readable: Readable.from(Buffer.isBuffer(input) ? [input] : [...input]), writable: outbound });
  connection.on('error', () => {});
  return { connection, written: () => Buffer.concat(chunks) };
}
