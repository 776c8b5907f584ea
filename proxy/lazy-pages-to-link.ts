import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Readable } from 'node:stream';
import { type LazyPagesClient, PAGE_SIZE } from '../src/criu/index.js';
import { type LinkSession } from '../src/link/index.js';
import { LAZY_PUSH_CHANNEL, LazyWireError, readPageRequests, writePages, type PageRun } from './lazy-wire.js';
import { PageTable, pageOf } from './page-table.js';
import { ChannelKind, openChannel } from './wire/index.js';

/** Pages pushed ahead per request to CRIU's page server, and requests out at once. */
const PUSH_PAGES = 128;
const PIPELINE = 2;
/**
 * How often one page may be sent again on the destination's word. CRIU asks again for a page of a
 * task only when copying it into that task failed and is retried (criu/uffd.c), a handful of times
 * at most; a destination that asks for more would make this host read and send pages without end.
 */
export const MAX_SENT_AGAIN = 8;
/** Once every page is sent, how often the wait for the destination's last word looks at `stop`. */
const STOP_POLL_MS = 250;

/**
 * The page faults the destination asks the source to serve, oldest first. The destination opens its
 * request channel as soon as the session exists: create this before awaiting anything.
 */
export class FaultQueue {
  private readonly faults: Array<{ readonly run: PageRun; readonly again: boolean }> = [];
  private wake: (() => void) | undefined;

  constructor(session: LinkSession) {
    session.on('channel', (channel) => {
      if (channel.kind !== ChannelKind.LAZY_REQUESTS) return;
      void (async () => {
        for await (const fault of readPageRequests(channel.readable as Readable)) {
          this.faults.push(fault);
          this.wake?.();
        }
      })().catch(() => {});
    });
  }

  /** The oldest fault; `again`: pages sent before, which the destination is asked for anew. */
  shift(): { readonly run: PageRun; readonly again: boolean } | undefined {
    return this.faults.shift();
  }

  /** Resolves the next time a fault arrives. */
  next(): Promise<void> {
    return new Promise<void>((resolve) => (this.wake = resolve));
  }
}

/**
 * Runs of at most this many pages are pushed first, and while the push waits for the restore: a
 * process touches its stack, its data and its small allocations as soon as it runs, each a fault
 * through the source otherwise; its bulk memory lies in large runs.
 */
const AHEAD_RUN_PAGES = 64;
/** At most this many pages of such runs go ahead (a tree of many processes has many small runs). */
const AHEAD_PAGES = 1024;

/**
 * The lazy runs cut into requests of at most PUSH_PAGES pages, for CRIU's lazy page server, the
 * smaller runs first; `ahead`: how many of the first requests may go while the push waits.
 */
function pushRequests(lazyRuns: readonly PageRun[]): { readonly runs: PageRun[]; readonly ahead: number } {
  const runs: PageRun[] = [];
  let ahead = 0;
  let aheadPages = 0;
  // sort is stable: runs of one size keep CRIU's order (by pid, then by address)
  for (const run of lazyRuns.filter((run) => run.nrPages > 0).sort((a, b) => a.nrPages - b.nrPages)) {
    if (run.nrPages <= AHEAD_RUN_PAGES && aheadPages + run.nrPages <= AHEAD_PAGES && ahead === runs.length) {
      ahead++;
      aheadPages += run.nrPages;
    }
    for (let at = 0; at < run.nrPages; at += PUSH_PAGES) {
      runs.push({ pid: run.pid, vaddr: run.vaddr + BigInt(at * PAGE_SIZE), nrPages: Math.min(PUSH_PAGES, run.nrPages - at) });
    }
  }
  return { runs, ahead };
}

/**
 * Moves every lazy page from CRIU's lazy page server (`client`, haul its only client) to the
 * destination: faults first, on the LAZY_ANSWERS channel the link sends ahead of bulk traffic, and
 * every other page behind them on a push channel, never asking CRIU for a page twice. Resolves with
 * the number of pages moved once every page of `lazyRuns` has; `stop()` returning a reason ends it
 * early. With `pushFrom`, only faults and the small runs are served until it settles: pushing the
 * rest would take CPU and link from the restore it is meant to speed up, while the restore runs.
 */
export async function moveLazyPages(
  session: LinkSession,
  client: LazyPagesClient,
  lazyRuns: readonly PageRun[],
  faults: FaultQueue,
  options: {
    onPages?: (moved: number) => void;
    stop?: () => string | undefined;
    pushFrom?: Promise<unknown>;
    /**
     * Faults are answered until this settles (the destination has every page), after every page was
     * sent too: the destination may ask again for pages it handed over (LazyPageStore).
     */
    servesUntil?: Promise<unknown>;
    /** Every page of the runs has been sent. */
    onAllSent?: () => void;
  } = {},
): Promise<number> {
  let pushing = options.pushFrom === undefined;
  const pushStarts = (options.pushFrom ?? Promise.resolve()).then(
    () => void (pushing = true),
    () => void (pushing = true),
  );
  const { runs, ahead } = pushRequests(lazyRuns);
  let served = options.servesUntil === undefined;
  const servedOrFailed = (options.servesUntil ?? Promise.resolve()).then(
    () => void (served = true),
    () => void (served = true),
  );
  let allSent = false;
  const answers = openChannel(session, ChannelKind.LAZY_ANSWERS, 'lazy-answers');
  const pushes = openChannel(session, ChannelKind.LAZY_PUSH, LAZY_PUSH_CHANNEL);
  const fetched = new PageTable();
  // one wait for the push channel's drain, however many faults wake the loop meanwhile: a drain
  // listener per wake-up piled up on the channel while it stayed full
  let drained: Promise<unknown> | undefined;
  const pushDrained = (): Promise<unknown> => (drained ??= once(pushes.writable, 'drain').finally(() => (drained = undefined)));
  let background = 0;
  let pulled = 0;
  // Pipelined: up to PIPELINE requests are out at CRIU's page server at once; answers come back
  // in order. A fault goes out ahead of every background request not yet sent.
  const inFlight: Array<{ run: PageRun; fault: boolean; again: boolean; answer: Promise<{ nrPages: number; pages: AsyncIterable<Buffer> }> }> = [];
  // by page number, so a loop over a run's pages allocates nothing; a page's value in `fetched` is
  // how often it was sent (asked of CRIU), the first time included
  const asked = (pid: number, page: number): boolean => fetched.getPage(pid, page) !== undefined;
  const countSentAgain = (run: PageRun): void => {
    const first = pageOf(run.vaddr);
    for (let i = 0; i < run.nrPages; i++) {
      const sent = (fetched.getPage(run.pid, first + i) ?? 0) + 1;
      if (sent > 1 + MAX_SENT_AGAIN) {
        throw new LazyWireError(`the destination asked for page 0x${(run.vaddr + BigInt(i * PAGE_SIZE)).toString(16)} of pid ${run.pid} again ${sent - 1} times; CRIU asks again only to retry a failed copy, at most ${MAX_SENT_AGAIN} times here`);
      }
      fetched.setPage(run.pid, first + i, sent);
    }
  };
  /** The first page of `run` not asked for yet, as an offset in pages; -1 when all were. */
  const firstUnasked = (run: PageRun): number => {
    const first = pageOf(run.vaddr);
    for (let i = 0; i < run.nrPages; i++) if (!asked(run.pid, first + i)) return i;
    return -1;
  };
  const nextRun = (): (PageRun & { fault: boolean; again: boolean }) | undefined => {
    let next = faults.shift();
    // a page asked for before is on its way (pushed, or answered), unless the destination asks again
    // for pages it had: CRIU's page server keeps every page (criu/page-pipe.c page_pipe_read tees
    // them out of its pipes), so they can be sent once more
    while (next && !next.again && asked(next.run.pid, pageOf(next.run.vaddr))) next = faults.shift();
    if (next?.again) {
      countSentAgain(next.run);
      return { ...next.run, fault: true, again: true };
    }
    let run = next?.run;
    const fault = run !== undefined;
    // background pages wait while the push channel is full, so faults never queue behind them;
    // while the push waits, only the requests that go ahead
    const pushable = pushing ? runs.length : ahead;
    if (!run && (background >= pushable || pushes.writable.writableNeedDrain)) return undefined;
    while (!run && background < pushable) {
      // a run may be partly asked for already (by a fault, or before a short answer)
      const candidate = runs[background]!;
      const from = firstUnasked(candidate);
      if (from < 0) background++;
      else run = { pid: candidate.pid, vaddr: candidate.vaddr + BigInt(from * PAGE_SIZE), nrPages: candidate.nrPages - from };
    }
    if (!run) return undefined;
    // ask only for pages not asked for yet, from the first one on, and count them asked now
    const first = pageOf(run.vaddr);
    let count = 0;
    while (count < run.nrPages && !asked(run.pid, first + count)) count++;
    for (let i = 0; i < count; i++) fetched.setPage(run.pid, first + i, 1);
    return { pid: run.pid, vaddr: run.vaddr, nrPages: count, fault, again: false };
  };
  // Done when every page of every run has been asked for and every answer consumed; counting pages
  // would not do, since a fault can ask for pages outside the runs, and an answer left unread
  // would hold up CRIU's session for good.
  for (;;) {
    const stopped = options.stop?.();
    if (stopped !== undefined) throw new Error(stopped);
    while (inFlight.length < PIPELINE) {
      const run = nextRun();
      if (!run) break;
      inFlight.push({ run, fault: run.fault, again: run.again, answer: client.get(run.pid, run.vaddr, run.nrPages) });
    }
    const oldest = inFlight.shift();
    if (!oldest) {
      if (background >= runs.length) {
        if (!allSent) {
          allSent = true;
          options.onAllSent?.();
        }
        if (served) break;
        await Promise.race([faults.next(), servedOrFailed, sleep(STOP_POLL_MS)]);
        continue;
      }
      await Promise.race([faults.next(), ...(pushing ? [] : [pushStarts]), ...(pushes.writable.writableNeedDrain ? [pushDrained()] : [])]);
      continue;
    }
    const answer = await oldest.answer;
    if (answer.nrPages !== oldest.run.nrPages && !oldest.again) {
      // a short answer: the rest of that run is asked for again later (pages sent again were all
      // sent before: the destination asks for the rest again itself)
      const first = pageOf(oldest.run.vaddr);
      for (let i = answer.nrPages; i < oldest.run.nrPages; i++) fetched.deletePage(oldest.run.pid, first + i);
      background = 0;
    }
    // pages sent again are counted once: both sides' records say how many pages moved
    if (!oldest.again) pulled += answer.nrPages;
    options.onPages?.(pulled);
    const run = { pid: oldest.run.pid, vaddr: oldest.run.vaddr, nrPages: answer.nrPages };
    if (oldest.fault) await writePages(answers.writable, run, answer.pages);
    // pushed pages are taken off CRIU's socket at once (the next answer is behind them) and left
    // to the link; no more are asked for until the push channel drains
    else await writePages(pushes.writable, run, answer.pages, { waitForDrain: false });
  }
  pushes.writable.end();
  answers.writable.end();
  return pulled;
}
