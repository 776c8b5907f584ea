import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { LazyPagesClient } from '../src/criu/index.js';
import { dialLink, type EndpointOptions, type LinkSession, type OutgoingChannel } from '../src/link/index.js';
import { DISK_CHANGES_FILE } from './cache-store.js';
import { sendImageFiles, type SentImages } from './images-to-link.js';
import { FaultQueue, moveLazyPages } from './lazy-pages-to-link.js';
import type { Mode } from './mode.js';
import { ChannelKind, ControlInbox, sendControl, type MigrationStart, type RestoreResult, openChannel } from './wire/index.js';

/** What the source says it moves: the mode and the process, and what a container manager adds. */
export type MigrationAnnouncement = Omit<MigrationStart, 'mode' | 'criu_version'> & { readonly criuVersion: string };

/** What the source has sent of the image set, for the destination to know when it is whole. */
export interface ImageSetSent {
  readonly files: number;
  readonly pageStreams: number;
  readonly bytes: number;
  readonly filesystemTars: number;
}

/**
 * The source side of one migration, whoever runs CRIU (`haul migrate`, or the Incus plugin's hook):
 * one session to the destination, a control channel for what the source says, and the
 * destination's answers, each waited for by name. The page intake (haul's page server, or a lazy
 * dump's directory and CRIU's lazy page server) and the image transport are the front end's
 * choice; the steps between the two hosts are these.
 */
export class SourceMigration {
  private failedByItself: Error | undefined;
  private abortedHere = false;

  private constructor(
    readonly session: LinkSession,
    readonly mode: Mode,
    private readonly control: OutgoingChannel,
    /** What the destination says, on the control channel it opens. */
    readonly answers: ControlInbox,
    /** Lazy mode: the page faults the destination asks the source to serve. */
    private readonly faults: FaultQueue,
  ) {
    session.once('aborted', (error) => {
      if (!this.abortedHere) this.failedByItself = error;
    });
  }

  /** Why the link failed, when it failed by itself or by the peer (not by `abort` here): what to report first, CRIU's errors being only its echo. */
  get linkFailure(): Error | undefined {
    return this.failedByItself;
  }

  /** Starts on a session just dialled: everything the destination opens is listened for before any await. */
  static over(session: LinkSession, mode: Mode): SourceMigration {
    const answers = new ControlInbox(session);
    const faults = new FaultQueue(session);
    const control = openChannel(session, ChannelKind.CONTROL, 'migration');
    return new SourceMigration(session, mode, control, answers, faults);
  }

  static async dial(url: string, endpoint: EndpointOptions, mode: Mode): Promise<SourceMigration> {
    const { session } = await dialLink(url, endpoint);
    return SourceMigration.over(session, mode);
  }

  /** The destination's first word on this migration. */
  async announce(what: MigrationAnnouncement): Promise<void> {
    const { criuVersion, ...rest } = what;
    await sendControl(this.control.writable, { migration_start: { ...rest, mode: this.mode, criu_version: criuVersion } });
  }

  /** Whether the destination takes it (a container manager's move): its reason when not. */
  async accepted(withinMs: number): Promise<{ readonly ok: boolean; readonly error: string }> {
    return this.answers.next('migration_accepted', withinMs);
  }

  /** The image files in `dir` (those `filter` keeps), each on a channel of its own. */
  sendImages(dir: string, filter?: (name: string) => boolean): Promise<SentImages> {
    return sendImageFiles(this.session, dir, filter);
  }

  /** The root filesystem's changes the manager's own transfer missed, as one tar (disk-changes-pack.ts). */
  async sendDiskChanges(tar: Readable): Promise<void> {
    await pipeline(tar, openChannel(this.session, ChannelKind.FILESYSTEM_TAR, DISK_CHANGES_FILE).writable);
  }

  /** Says what was sent, so that the destination knows when its image set is whole. */
  async imagesComplete(sent: ImageSetSent): Promise<void> {
    await sendControl(this.control.writable, { images_complete: { files: sent.files, page_streams: sent.pageStreams, bytes: BigInt(sent.bytes), filesystem_tars: sent.filesystemTars } });
  }

  /** Until the destination holds every stream, whole; rejects with its reason when it does not. */
  async stored(withinMs: number): Promise<void> {
    const stored = await this.answers.next('images_stored', withinMs);
    if (!stored.ok) throw new Error(`the destination could not store the pages: ${stored.error}`);
  }

  /** The destination's report of its restore. */
  restoreReport(withinMs?: number): Promise<RestoreResult> {
    return this.answers.next('restore_result', withinMs);
  }

  /** Lazy mode: until the destination says every page reached the restored copy. */
  async lazyComplete(withinMs?: number): Promise<void> {
    await this.answers.next('lazy_complete', withinMs);
  }

  /**
   * Lazy mode: every page of `runs` from CRIU's lazy page server to the destination, its faults
   * first (moveLazyPages), and its faults answered until it says every page reached the copy.
   */
  movePages(client: LazyPagesClient, runs: Parameters<typeof moveLazyPages>[2], options: Parameters<typeof moveLazyPages>[4] = {}): Promise<number> {
    const lastPage = this.answers.next('lazy_complete');
    lastPage.catch(() => {});
    return moveLazyPages(this.session, client, runs, this.faults, { servesUntil: lastPage, ...options });
  }

  /**
   * The source's copy has ended: the destination may let its own run. Resolves once the
   * destination has confirmed it (by ending its answers); a failure here leaves the migration in
   * doubt, which `inDoubt` turns into the error to throw.
   */
  async commit(sourcePid: number, inDoubt: (cause: unknown) => Error): Promise<void> {
    try {
      await sendControl(this.control.writable, { commit: { source_pid: sourcePid } });
      await this.answers.ended;
    } catch (error) {
      throw inDoubt(error);
    }
  }

  /** The migration is over: ends the control channel and the session, cleanly. */
  finish(): void {
    this.control.writable.end();
    this.session.close();
  }

  /** Ends the session with `reason` for the destination, if it is still open. */
  abort(reason: string): void {
    if (!this.session.isOpen) return;
    this.abortedHere = true;
    this.session.abort(reason);
  }
}
