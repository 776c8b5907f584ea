import { EventEmitter } from 'node:events';
import WebSocket from 'ws';

/** One message of incusd's /1.0/events stream (the parts the agent reads). */
export interface IncusEvent {
  readonly type: string;
  readonly timestamp: string;
  readonly metadata: {
    readonly description?: string;
    readonly status?: string;
    readonly resources?: { readonly instances?: readonly string[] } | null;
    readonly action?: string;
    readonly name?: string;
  };
}

interface EventsEvents {
  event: [IncusEvent];
  /** The stream (re)connected: whatever happened while it was down must be re-read from state. */
  connected: [];
  disconnected: [Error | undefined];
}

const RETRY_MIN_MS = 200;
const RETRY_MAX_MS = 5_000;

/**
 * Follows incusd's /1.0/events (operation and lifecycle) over its unix socket. incusd drops a
 * listener that falls behind instead of shortening its stream, so this reconnects, with backoff,
 * for as long as it runs, and says so ('connected') so its user can re-read state.
 */
export class IncusEvents extends EventEmitter<EventsEvents> {
  private socket: WebSocket | undefined;
  private stopped = false;
  private retryMs = RETRY_MIN_MS;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly socketPath: string) {
    super();
    this.connect();
  }

  private connect(): void {
    if (this.stopped) return;
    const socket = new WebSocket(`ws+unix://${this.socketPath}:/1.0/events?type=operation,lifecycle&all-projects=true`);
    this.socket = socket;
    socket.on('open', () => {
      this.retryMs = RETRY_MIN_MS;
      this.emit('connected');
    });
    socket.on('message', (data) => {
      try {
        this.emit('event', JSON.parse(data.toString()) as IncusEvent);
      } catch {
        // not an event: incusd sends only JSON objects, so ignore what does not parse
      }
    });
    let failure: Error | undefined;
    socket.on('error', (error) => (failure = error));
    socket.on('close', () => {
      if (this.socket !== socket) return;
      this.socket = undefined;
      if (this.stopped) return;
      this.emit('disconnected', failure);
      this.timer = setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
    });
  }

  close(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.socket?.close();
  }
}
