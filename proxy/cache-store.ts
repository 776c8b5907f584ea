import { createWriteStream } from 'node:fs';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { FIRST_PAGES_ID, PagemapWriter, PAGE_SIZE, criuImageName } from '../src/criu/index.js';
import { type IncomingChannel, type LinkSession } from '../src/link/index.js';
import { DEFAULT_MAX_DISK_CHANGES_BYTES, DiskChangesError } from './disk-changes-format.js';
import { DEFAULT_DISK_RESERVE_BYTES, watchDiskReserve, type DiskReserveWatch } from './disk-reserve.js';
import { readPageRecords, targetOfPageChannel } from './page-stream.js';
import { ControlInbox, ChannelKind, type ImagesComplete } from './wire/index.js';

/** Where the store keeps the root filesystem's changes (one FILESYSTEM_TAR channel per migration). */
export const DISK_CHANGES_FILE = 'disk-changes.tar';

/**
 * Once a migration is over (or can no longer happen), what was stored for it goes: images, pages,
 * lazy pages, disk changes; the restore has read them, or never will. Logs and the restored pid
 * stay for a post-mortem.
 */
export async function discardImages(dir: string): Promise<void> {
  const names = await readdir(dir).catch(() => []);
  const kept = (name: string): boolean => name.endsWith('.log') || name.endsWith('.pid');
  await Promise.all(names.filter((name) => !kept(name)).map((name) => rm(join(dir, name), { recursive: true, force: true })));
}

/**
 * The image-cache's store: writes what arrives on a session into an image directory, restore-ready
 * (pagemaps and pages in CRIU's format, other images as files), as it arrives. It knows the image
 * set is complete only when the source has said how many files and page streams it sent and every
 * one of them has ended with a good digest; before that, nothing here may be restored.
 */
export interface CacheStoreOptions {
  /** Bytes of disk-changes tar the store keeps at most: the applier's own cap, so no tar it would refuse fills this disk first. */
  readonly maxDiskChangesBytes?: number;
  /** Free space on the store's filesystem below which the session is aborted (DiskReserveError). */
  readonly diskReserveBytes?: number;
}

export class CacheStore {
  private nextPagesId = FIRST_PAGES_ID;
  private endedFiles = 0;
  private endedPageStreams = 0;
  private endedTars = 0;
  private tarsSeen = 0;
  private announced: ImagesComplete | undefined;
  private settle!: { resolve(): void; reject(error: Error): void };
  /** Resolves when the image set is complete; rejects on the first stream that failed. */
  readonly complete: Promise<void>;
  /** What the source says on its control channel (migration_start, images_complete, commit...). */
  readonly control: ControlInbox;
  /** Pages written so far (with their data: zero and lazy runs carry none). */
  pagesStored = 0;

  private readonly maxDiskChangesBytes: number;
  private readonly reserve: DiskReserveWatch;

  constructor(
    session: LinkSession,
    private readonly dir: string,
    options: CacheStoreOptions = {},
  ) {
    this.maxDiskChangesBytes = options.maxDiskChangesBytes ?? DEFAULT_MAX_DISK_CHANGES_BYTES;
    this.complete = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    this.complete.catch(() => {});
    // until the session ends: lazy pages go on arriving after the image set is complete
    const reserve = (this.reserve = watchDiskReserve(dir, options.diskReserveBytes ?? DEFAULT_DISK_RESERVE_BYTES, (error) => {
      this.settle.reject(error);
      session.abort(error.message, error);
    }));
    session.once('closed', () => reserve.stop());
    session.once('aborted', () => reserve.stop());
    this.control = new ControlInbox(session, (message) => {
      if (!message.images_complete) return;
      this.announced = message.images_complete;
      this.check();
    });
    session.on('channel', (channel) => void this.take(channel).catch((error: Error) => this.settle.reject(error)));
    session.once('aborted', (error) => this.settle.reject(error));
  }

  private async take(channel: IncomingChannel): Promise<void> {
    switch (channel.kind) {
      case ChannelKind.PAGES: {
        const target = targetOfPageChannel(channel.name);
        const writer = await PagemapWriter.create(this.dir, target, this.nextPagesId++);
        try {
          for await (const { entry, pages } of readPageRecords(channel.readable)) {
            await writer.add(entry, pages);
            if (pages) {
              this.pagesStored += entry.nrPages;
              this.reserve.wrote(entry.nrPages * PAGE_SIZE);
            }
          }
          await writer.close();
        } catch (error) {
          await writer.destroy();
          throw error;
        }
        this.endedPageStreams++;
        break;
      }
      case ChannelKind.IMAGE_FILE:
        // the name is the peer's word: only a CRIU image's, never one of the store's own files;
        // and a second file of one name is refused (wx), not written over the first
        await pipeline(channel.readable, counted(this.reserve), createWriteStream(join(this.dir, criuImageName(channel.name)), { flags: 'wx', mode: 0o644 }));
        this.endedFiles++;
        break;
      case ChannelKind.FILESYSTEM_TAR:
        // kept as it came, applied onto the root filesystem just before the restore
        if (this.tarsSeen++ > 0) throw new Error('the source sent a second disk-changes tar; one migration has one root filesystem');
        await pipeline(channel.readable, atMost(this.maxDiskChangesBytes), counted(this.reserve), createWriteStream(join(this.dir, DISK_CHANGES_FILE), { mode: 0o600 }));
        this.endedTars++;
        break;
      case ChannelKind.CONTROL:
        return; // the control inbox reads it
      case ChannelKind.LAZY_ANSWERS:
      case ChannelKind.LAZY_PUSH:
        return; // lazy pages are the image-cache's own business, not part of the image set
      default:
        throw new Error(`the cache does not take ${channel.name} (kind ${channel.kind})`);
    }
    this.check();
  }

  private check(): void {
    const announced = this.announced;
    if (announced && this.endedFiles === announced.files && this.endedPageStreams === announced.page_streams && this.endedTars === announced.filesystem_tars) {
      this.settle.resolve();
    }
  }
}

/** Passes bytes through, telling the reserve watch how many. */
function counted(reserve: DiskReserveWatch): Transform {
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      reserve.wrote(chunk.length);
      done(null, chunk);
    },
  });
}

/** Passes bytes through until more than `limit` have come, then fails the stream. */
function atMost(limit: number): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      seen += chunk.length;
      if (seen > limit) return done(new DiskChangesError('HAUL_DISK_CHANGES_TOO_LARGE', `the source's disk changes pass the cap of ${limit} bytes`));
      done(null, chunk);
    },
  });
}
