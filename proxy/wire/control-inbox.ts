import type { Readable } from 'node:stream';
import { LinkLimitError, type LinkSession } from '../../src/link/index.js';
import { ChannelKind } from './channels.js';
import { receiveControl } from './control-channel.js';
import type { Control } from './messages.js';

/**
 * What the peer says on the control channel it opens on a session: every message kept in order
 * (up to the session's maxControlMessages; one more aborts the session), waited for by the field
 * it carries. Create it as soon as the session exists, before any await: the peer's channels are
 * announced once.
 */
export class ControlInbox {
  readonly messages: Control[] = [];
  /** Resolves when the peer ends its control channel; rejects if the session fails first. */
  readonly ended: Promise<void>;
  private failure: Error | undefined;
  private readonly waiters: Array<() => void> = [];

  constructor(session: LinkSession, onMessage: (message: Control) => void = () => {}) {
    let settle!: { resolve(): void; reject(error: Error): void };
    this.ended = new Promise((resolve, reject) => (settle = { resolve, reject }));
    this.ended.catch(() => {});
    session.once('aborted', (error) => {
      this.fail(error);
      settle.reject(error);
    });
    session.once('closed', () => this.fail(new Error('the peer closed the link')));
    session.on('channel', (channel) => {
      if (channel.kind !== ChannelKind.CONTROL) return;
      void (async () => {
        for await (const message of receiveControl(channel.readable as Readable)) {
          const max = session.limits.maxControlMessages;
          if (this.messages.length >= max) {
            const error = new LinkLimitError('controlMessages', max, `the peer sent more than ${max} control messages`);
            session.abort(error.message, error);
            return;
          }
          this.messages.push(message);
          onMessage(message);
          this.wake();
        }
        this.fail(new Error('the peer ended its control channel'));
        settle.resolve();
      })().catch((error: Error) => {
        this.fail(error);
        settle.reject(error);
      });
    });
  }

  /** The first message carrying `field`; rejects once none can come any more, or after `timeoutMs`. */
  async next<K extends keyof Control>(field: K, timeoutMs = Number.POSITIVE_INFINITY): Promise<NonNullable<Control[K]>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.messages.find((message) => message[field]);
      if (found) return found[field]!;
      if (this.failure) throw this.failure;
      if (Date.now() >= deadline) throw new Error(`the peer did not send ${field} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        if (Number.isFinite(timeoutMs)) setTimeout(resolve, Math.max(0, deadline - Date.now()) + 1).unref();
      });
    }
  }

  private fail(error: Error): void {
    this.failure ??= error;
    this.wake();
  }

  private wake(): void {
    this.waiters.splice(0).forEach((wake) => wake());
  }
}
