import type { Socket } from 'node:net';
import { LazyPagesClient, type HeaderLayout } from '../src/criu/index.js';
import { expectPeerProcess, guardNewLoopbackPort, hasEnded, isRunning, type LoopbackGuard, type ProcessIdentity } from '../src/host/index.js';

/** How long CRIU may take from post-dump to listening with its lazy page server. */
export const LAZY_SERVER_MS = 60_000;

/**
 * Until CRIU's lazy page server listens (`heard`: its status-ready action), or LAZY_SERVER_MS, then
 * rejects. Its timer goes with it: a process whose migration is over does not wait it out.
 */
async function lazyServerListening(heard: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`CRIU's lazy page server did not start within ${LAZY_SERVER_MS / 1000} s`)), LAZY_SERVER_MS);
  });
  try {
    await Promise.race([heard, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** A byte no page-server command starts with: CRIU fails the session on it, and resumes the source. */
const BAD_HEADER = Buffer.from([0xff]);

/**
 * The source side of every lazy migration, whoever runs CRIU: `criu dump --lazy-pages` writes its
 * images into a directory of haul's (the few pages that cannot be lazy too), and once its post-dump
 * action returns it serves the lazy pages itself, on a loopback port, to its first client, and
 * believes a CLOSE from anyone (criu/uffd.c, criu/page-xfer.c). So the port is one only root's
 * sockets may reach, and haul's own client alone (src/host/loopback-guard.ts), and nothing is
 * asked of or believed from whoever answers there until it is seen to be CRIU. The source's fate
 * is decided on that session: a plain close once every page has moved ends it; a bad header
 * before that makes CRIU resume it. (CRIU 4.1.1 cannot take --ps-socket with --lazy-pages, and on
 * TCP it corks its page-server connection until the kernel's 200 ms timer, inside the freeze: so
 * the dump does not go through haul's page server; see dump-to-link.ts.)
 */
export class LazyDump {
  private client: LazyPagesClient | undefined;
  private socket: Socket | undefined;
  /** The guard's release, begun once haul is CRIU's client. */
  private releasing: Promise<void> | undefined;

  private constructor(private readonly guard: LoopbackGuard) {}

  /** Guards a port for CRIU's lazy page server before anything listens there. */
  static async prepare(): Promise<LazyDump> {
    return new LazyDump(await guardNewLoopbackPort({ ownClientsOnly: true }));
  }

  get port(): number {
    return this.guard.port;
  }

  /** Set when no port only root may bind was free: a local user who binds it first can make the move fail (not take it over). */
  get bindableByAnyone(): string | undefined {
    return this.guard.bindableByAnyone;
  }

  /** What `criu dump` is given for its lazy page server. */
  criuArgs(): string[] {
    return ['--lazy-pages', '--address', '127.0.0.1', '--port', String(this.guard.port)];
  }

  /**
   * Once CRIU listens (`listening`: its status-ready action), haul's client of the lazy page
   * server, checked to be connected to `criu`. CRIU then stops listening, and the guard goes.
   */
  async connect(criu: ProcessIdentity, layout: HeaderLayout, listening: Promise<unknown>): Promise<LazyPagesClient> {
    await lazyServerListening(listening);
    const socket = (this.socket = await this.guard.connect());
    socket.on('error', () => {}); // a reset shows in the checks and reads below, not as a crash
    await expectPeerProcess(socket, criu);
    // CRIU takes no second client, so the guard may go while the pages move: awaited, its nft run
    // (some 30 ms, more on a busy core) held the restore's first fault at the destination.
    // releaseWhenGone waits for it.
    this.releasing = this.guard.release();
    return (this.client = new LazyPagesClient(socket, layout));
  }

  /** Every lazy page has reached the destination: a plain end of the session, and CRIU ends the source. */
  async end(): Promise<void> {
    if (!this.client) throw new Error("haul never reached CRIU's lazy page server");
    await this.client.close().catch(() => this.socket?.end());
  }

  /**
   * Makes CRIU resume the source: a bad header on the session haul holds, or, when CRIU is past
   * post-dump and not yet reached, as its first client once it listens (`listening`). Before
   * post-dump the dump is failed there instead (the action script's answer), not here.
   */
  async resume(listening: Promise<unknown>): Promise<void> {
    if (this.socket) {
      this.socket.end(BAD_HEADER);
      return;
    }
    await lazyServerListening(listening);
    const socket = await this.guard.connect();
    socket.on('error', () => {}).end(BAD_HEADER);
  }

  /**
   * Lets the port go once CRIU has: it may still be on its way to listening (a failure came first,
   * and it goes on to its lazy page server all the same), and would take any client then. Released
   * already (or on its way) once haul was seen connected to CRIU, and waited for here; else by the
   * guard's own timeout.
   */
  async releaseWhenGone(criu: ProcessIdentity | undefined): Promise<'released' | 'criu-runs'> {
    if (criu) await hasEnded(criu, 200, LAZY_SERVER_MS + 30_000);
    if (criu && isRunning(criu)) {
      if (!this.releasing) return 'criu-runs';
      await this.releasing;
      return 'released';
    }
    await this.guard.release();
    return 'released';
  }
}
