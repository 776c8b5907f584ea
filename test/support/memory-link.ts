import type { FrameTransport } from '../../src/link/session.js';

type Handlers = { frame(bytes: Buffer): void; closed(reason: string): void };

/**
 * Two ends of an in-memory connection for link sessions: frames arrive in order, each after a delay
 * the test chooses; `close()` lets what was sent arrive first (as a WebSocket close does), `cut()`
 * drops the connection with whatever was still on the way.
 */
export function memoryTransportPair(delayMs: () => number = () => 0): { a: FrameTransport; b: FrameTransport; cut(): void } {
  const handlers: Array<Handlers | undefined> = [undefined, undefined];
  const queues: Array<Array<{ at: number; frame: Buffer }>> = [[], []];
  const timers: Array<NodeJS.Timeout | undefined> = [undefined, undefined];
  let open = true;
  let closing = false;

  const closeNow = (reason: string): void => {
    if (!open) return;
    open = false;
    timers.forEach((t) => t && clearTimeout(t));
    setImmediate(() => handlers.forEach((h) => h?.closed(reason)));
  };
  // one delivery loop per direction, so frames never overtake each other
  const drain = (to: number): void => {
    timers[to] = undefined;
    const queue = queues[to]!;
    while (open && queue.length > 0 && handlers[to] && queue[0]!.at <= Date.now()) handlers[to]!.frame(queue.shift()!.frame);
    if (!open) return;
    if (queue.length > 0) timers[to] = setTimeout(() => drain(to), Math.max(0, queue[0]!.at - Date.now()));
    else if (closing && queues.every((q) => q.length === 0)) closeNow('closed');
  };
  const end = (side: number): FrameTransport => ({
    send(frame, done) {
      if (!open || closing) return done(new Error('connection closed'));
      const to = 1 - side;
      queues[to]!.push({ at: Date.now() + delayMs(), frame });
      if (!timers[to]) timers[to] = setTimeout(() => drain(to), 0);
      setImmediate(() => done());
    },
    deliverTo(h) {
      handlers[side] = h;
      if (!timers[side]) timers[side] = setTimeout(() => drain(side), 0);
    },
    close() {
      if (!open || closing) return;
      closing = true;
      if (queues.every((q) => q.length === 0)) closeNow('closed');
    },
  });
  return { a: end(0), b: end(1), cut: () => closeNow('cut') };
}
