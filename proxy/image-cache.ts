import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCriu } from '../src/criu/run/criu-process.js';
import { sendControl } from '../src/link/control-channel.js';
import type { EndpointOptions } from '../src/link/endpoint-options.js';
import { ChannelKind } from '../src/link/frame.js';
import { LinkListener } from '../src/link/listener.js';
import type { LinkSession } from '../src/link/session.js';
import { CacheStore } from './cache-store.js';

export interface CacheOptions extends EndpointOptions {
  readonly address: string;
  readonly port: number;
  /** Each migration gets its own image directory below this one. */
  readonly dir: string;
  readonly criuBinary?: string;
  readonly onEvent?: (event: CacheEvent) => void;
}

export type CacheEvent =
  | { readonly kind: 'migration'; readonly id: string; readonly dir: string }
  | { readonly kind: 'restored'; readonly id: string; readonly pid: number }
  | { readonly kind: 'failed'; readonly id: string; readonly error: string };

/**
 * The image-cache on the destination: takes each migration's images and pages as they arrive,
 * restores once the image set is complete and whole, and tells the source the outcome, which is
 * what lets the source end its copy (or resume it).
 */
export class ImageCache {
  private migrations = 0;

  private constructor(
    readonly listener: LinkListener,
    private readonly options: CacheOptions,
  ) {
    listener.on('session', (session) => void this.serve(session));
  }

  static async start(options: CacheOptions): Promise<ImageCache> {
    await mkdir(options.dir, { recursive: true, mode: 0o700 });
    return new ImageCache(await LinkListener.listen(options.address, options.port, options), options);
  }

  get port(): number {
    return this.listener.port;
  }

  private async serve(session: LinkSession): Promise<void> {
    const id = `${new Date().toISOString().replace(/[:.]/g, '-')}-${++this.migrations}`;
    const dir = join(this.options.dir, id);
    await mkdir(dir, { mode: 0o700 });
    this.options.onEvent?.({ kind: 'migration', id, dir });
    const store = new CacheStore(session, dir);
    const answer = session.openChannel(ChannelKind.CONTROL, 'restore-result');
    try {
      await store.complete;
      const pidFile = join(dir, 'restored.pid');
      await runCriu('restore', ['-D', dir, '-d', '--pidfile', pidFile], { logFile: join(dir, 'restore.log'), ...(this.options.criuBinary ? { binary: this.options.criuBinary } : {}) });
      const pid = Number((await readFile(pidFile, 'utf8')).trim());
      await sendControl(answer.writable, { restore_result: { ok: true, error: '', pid } });
      answer.writable.end();
      this.options.onEvent?.({ kind: 'restored', id, pid });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      this.options.onEvent?.({ kind: 'failed', id, error: reason });
      if (session.isOpen) {
        await sendControl(answer.writable, { restore_result: { ok: false, error: reason, pid: 0 } }).catch(() => {});
        answer.writable.end();
      }
    }
  }

  async close(): Promise<void> {
    await this.listener.close();
  }
}
