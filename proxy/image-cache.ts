import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCriu } from '../src/criu/run/criu-process.js';
import { sendControl } from '../src/link/control-channel.js';
import type { EndpointOptions } from '../src/link/endpoint-options.js';
import { ChannelKind } from '../src/link/frame.js';
import { LinkListener } from '../src/link/listener.js';
import type { LinkSession } from '../src/link/session.js';
import { acceptOne } from '../src/criu/page-server/connection.js';
import { serveLazyPages } from '../src/criu/page-server/lazy-pages-server.js';
import { startCriu } from '../src/criu/run/criu-process.js';
import { criuVersion, headerLayoutFor } from '../src/criu/run/criu-version.js';
import { CacheStore } from './cache-store.js';
import { LazyPageStore } from './lazy-page-store.js';
import { LAZY_PUSH_CHANNEL, readPages } from './lazy-wire.js';

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
    const lazyPages = await LazyPageStore.create(join(dir, 'lazy-pages.bin'), session.openChannel(ChannelKind.LAZY_REQUESTS, 'lazy-requests').writable);
    // lazy pages arrive on two channels: answers to the destination's faults, and the rest pushed
    session.on('channel', (channel) => {
      const lazy = channel.kind === ChannelKind.LAZY_ANSWERS || (channel.kind === ChannelKind.PAGES && channel.name === LAZY_PUSH_CHANNEL);
      if (!lazy) return;
      void (async () => {
        for await (const { run, pages } of readPages(channel.readable)) await lazyPages.add(run, pages!);
      })().catch((error: Error) => session.isOpen && session.abort(`bad lazy pages from the source: ${error.message}`));
    });
    const restoreBinary = this.options.criuBinary ? { binary: this.options.criuBinary } : {};
    try {
      await store.complete;
      const lazy = store.control.some((message) => message.migration_start?.mode === 'lazy');
      const pidFile = join(dir, 'restored.pid');
      let afterRestore: (() => Promise<void>) | undefined;
      if (!lazy) {
        await runCriu('restore', ['-D', dir, '-d', '--pidfile', pidFile], { logFile: join(dir, 'restore.log'), ...restoreBinary });
      } else {
        // the restore starts before the memory is here: criu lazy-pages asks haul, haul asks the source
        const server = await acceptOne('127.0.0.1', 0);
        const served = server.connection.then(async (socket) => serveLazyPages(socket, headerLayoutFor(await criuVersion()), lazyPages));
        served.catch(() => {});
        const daemon = startCriu('lazy-pages', ['--page-server', '--address', '127.0.0.1', '--port', String(server.port), '-D', dir], { logFile: join(dir, 'lazy-pages.log'), statusFd: true, cwd: dir });
        try {
          await daemon.ready;
          await runCriu('restore', ['--lazy-pages', '-D', dir, '-d', '--pidfile', pidFile], { logFile: join(dir, 'restore.log'), cwd: dir, ...restoreBinary });
        } catch (error) {
          // no restore will ever connect to it: the lazy-pages daemon would wait forever
          daemon.child.kill('SIGKILL');
          server.close();
          throw error;
        }
        afterRestore = async () => {
          await daemon.exited;
          await served;
          await sendControl(answer.writable, { lazy_complete: { pages: BigInt(lazyPages.received) } });
          answer.writable.end();
        };
      }
      const pid = Number((await readFile(pidFile, 'utf8')).trim());
      await sendControl(answer.writable, { restore_result: { ok: true, error: '', pid } });
      this.options.onEvent?.({ kind: 'restored', id, pid });
      if (afterRestore) {
        await afterRestore().catch((error: Error) => session.isOpen && session.abort(`lazy pages could not all be delivered: ${error.message}`));
      } else {
        answer.writable.end();
      }
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      this.options.onEvent?.({ kind: 'failed', id, error: reason });
      if (session.isOpen) {
        await sendControl(answer.writable, { restore_result: { ok: false, error: reason, pid: 0 } }).catch(() => {});
        answer.writable.end();
      }
    } finally {
      await lazyPages.close().catch(() => {});
    }
  }

  async close(): Promise<void> {
    await this.listener.close();
  }
}
