import { HEADER_SIZE, detectHeaderLayout, type HeaderLayout } from './protocol.js';
import type { StreamReader } from '../../streams/stream-reader.js';

/**
 * Reads page-server headers of a known layout, or of one detected from the first header when the
 * peer's CRIU version is unknown ('detect').
 */
export class HeaderReader {
  constructor(
    private readonly reader: StreamReader,
    private layout: HeaderLayout | 'detect',
  ) {}

  get detectedLayout(): HeaderLayout | undefined {
    return this.layout === 'detect' ? undefined : this.layout;
  }

  /** The next header's bytes and layout, or null when the peer closed between headers. */
  async next(): Promise<{ bytes: Buffer; layout: HeaderLayout } | null> {
    if (this.layout !== 'detect') {
      const bytes = await this.reader.readExactly(HEADER_SIZE[this.layout], 'page-server header');
      return bytes && { bytes, layout: this.layout };
    }
    // the 24 bytes every layout starts with are safe to wait for: a 4.1 peer sends exactly that much
    // before it waits for an answer
    const first = await this.reader.readExactly(HEADER_SIZE['criu-4.1'], 'page-server header');
    if (first === null) return null;
    const layout = detectHeaderLayout(first);
    this.layout = layout;
    if (layout === 'criu-4.1') return { bytes: first, layout };
    const rest = await this.reader.readExactly(HEADER_SIZE[layout] - first.length, 'page-server header');
    if (rest === null) return null;
    return { bytes: Buffer.concat([first, rest]), layout };
  }
}
