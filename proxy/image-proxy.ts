import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { acceptOne } from '../src/criu/page-server/connection.js';
import { receiveDump } from '../src/criu/page-server/dump-receiver.js';
import { startCriu } from '../src/criu/run/criu-process.js';
import { criuVersion, headerLayoutFor } from '../src/criu/run/criu-version.js';
import { PostDumpGate } from '../src/criu/run/post-dump-gate.js';
import { receiveControl, sendControl } from '../src/link/control-channel.js';
import { dialLink } from '../src/link/dialer.js';
import type { EndpointOptions } from '../src/link/endpoint-options.js';
import { ChannelKind } from '../src/link/frame.js';
import type { RestoreResult } from '../src/link/messages.js';
import type { LinkSession } from '../src/link/session.js';
import { sendImageFiles } from './images-to-link.js';
import { LinkPagemapSink } from './pages-to-link.js';

export interface MigrateOptions extends EndpointOptions {
  readonly pid: number;
  /** ws://HOST:PORT (insecure, loopback only) or wss://HOST:PORT */
  readonly to: string;
  readonly criuBinary?: string;
  /** Where the dump's small images and CRIU's log go on the source (never the pages). */
  readonly workDir?: string;
  readonly onProgress?: (stage: string) => void;
}

export interface MigrationSummary {
  readonly mode: 'pre-copy';
  readonly pages: number;
  readonly imageBytes: number;
  readonly dumpMs: number;
  readonly transferMs: number;
  readonly restoreMs: number;
  readonly restoredPid: number;
}

/** The destination's verdict on this migration, from its control channel. */
function restoreResult(session: LinkSession): Promise<RestoreResult> {
  return new Promise((resolve, reject) => {
    session.once('aborted', reject);
    session.on('channel', (channel) => {
      if (channel.kind !== ChannelKind.CONTROL) return;
      void (async () => {
        for await (const message of receiveControl(channel.readable as Readable)) if (message.restore_result) return resolve(message.restore_result);
        reject(new Error('the destination closed its control channel without a restore result'));
      })().catch(reject);
    });
  });
}

/**
 * Pre-copy migration of a process tree through haul: `criu dump` sends its pages to haul's page
 * server on loopback, which streams them over the link as they come; the other images follow; the
 * source stays frozen at post-dump until the destination reports its restore, and is ended only if
 * that succeeded. On any failure before, the source resumes.
 */
export async function migratePreCopy(options: MigrateOptions): Promise<MigrationSummary> {
  const progress = options.onProgress ?? (() => {});
  const version = await criuVersion(options.criuBinary);
  const workDir = options.workDir ?? (await mkdtemp(join(tmpdir(), 'haul-migrate-')));
  const imagesDir = join(workDir, 'images');
  await mkdir(imagesDir, { recursive: true });
  const { session } = await dialLink(options.to, options);
  let linkFailure: Error | undefined;
  session.once('aborted', (error) => (linkFailure = error));
  const verdict = restoreResult(session);
  verdict.catch(() => {});
  const gate = await PostDumpGate.create(workDir);
  const pageServer = await acceptOne('127.0.0.1', 0);
  const pages = new LinkPagemapSink(session);
  const received = pageServer.connection.then((socket) => receiveDump(socket, headerLayoutFor(version), pages));
  received.catch(() => {});
  const control = session.openChannel(ChannelKind.CONTROL, 'migration');
  await sendControl(control.writable, { migration_start: { mode: 'pre-copy', pid: options.pid, criu_version: `${version.major}.${version.minor}.${version.patch}` } });

  const started = Date.now();
  progress('dumping');
  const dump = startCriu(
    'dump',
    ['-t', String(options.pid), '-D', imagesDir, '--page-server', '--address', '127.0.0.1', '--port', String(pageServer.port), '--action-script', gate.scriptPath],
    { logFile: join(workDir, 'dump.log'), ...(options.criuBinary ? { binary: options.criuBinary } : {}) },
  );
  try {
    await Promise.race([gate.reached, dump.exited.then(() => Promise.reject(new Error('criu dump ended before post-dump')))]);
    const summary = await received;
    const dumped = Date.now();
    progress('sending images');
    const images = await sendImageFiles(session, imagesDir);
    await sendControl(control.writable, { images_complete: { files: images.files, page_streams: pages.pageStreams, bytes: BigInt(images.bytes) } });
    const sent = Date.now();
    progress('restoring on the destination');
    const result = await verdict;
    if (!result.ok) throw new Error(`the destination could not restore: ${result.error}`);
    await gate.release(true);
    await dump.exited;
    control.writable.end();
    session.close();
    return { mode: 'pre-copy', pages: summary.pagesReceived, imageBytes: images.bytes, dumpMs: dumped - started, transferMs: sent - dumped, restoreMs: Date.now() - sent, restoredPid: result.pid };
  } catch (error) {
    // the source must keep running: resume it, then say why
    await gate.release(false).catch(() => {});
    await gate.close();
    await dump.exited.catch(() => {});
    pageServer.close();
    if (session.isOpen) session.abort(error instanceof Error ? error.message : String(error));
    // the link's reason is the cause when it failed first; CRIU's errors are then only its echo
    const cause = linkFailure ?? error;
    throw new Error(`migration of ${options.pid} failed, the source process keeps running: ${cause instanceof Error ? cause.message : String(cause)}`, { cause: error });
  } finally {
    if (!options.workDir) await rm(workDir, { recursive: true, force: true });
  }
}
