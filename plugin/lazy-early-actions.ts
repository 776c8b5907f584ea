import { execFile } from 'node:child_process';
import { constants, openSync } from 'node:fs';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { shellWord } from '../src/shell-words.js';

/**
 * The action script haul gives a lazy dump in place of Incus' own ("lazy-early",
 * docs/incus-native-move.md). Incus' post-dump step waits for the destination's restore,
 * CRIU 4.1.1 starts its lazy page server only once post-dump returns, and the restore itself needs
 * lazy pages: run in order they deadlock. So at post-dump this script starts Incus' step detached
 * and returns at once; the step's exit status comes to haul, which then decides the source's fate
 * on CRIU's page server (close: the source ends; a bad header: CRIU resumes it). CRIU's other
 * actions run Incus' script as before; status-ready (the lazy page server listens) is reported too.
 *
 * The dump writes its images into a directory of haul's (see SourceRole: a lazy dump cannot use
 * haul's page server without waiting on CRIU's TCP cork). Before Incus' step starts, the script
 * moves every image but the page data (pages-*.img, which haul sends) into Incus' checkpoint
 * directory, which Incus' step then sends on as ever.
 */
export class LazyEarlyActions {
  private constructor(
    readonly scriptPath: string,
    /** Resolves when CRIU's lazy page server listens. */
    readonly statusReady: Promise<void>,
    /** Resolves when the dump is over and its images but the page data are in Incus' directory. */
    readonly postDump: Promise<void>,
    /** Resolves with the exit status of Incus' own post-dump step (0: Incus restored it). */
    readonly incusPostDump: Promise<number>,
    private readonly events: Socket,
  ) {}

  /** `images`: where the dump writes (haul's) and where Incus expects the images (its -D). */
  static async create(dir: string, incusScript: string, images: { readonly dumpDir: string; readonly checkpointDir: string }): Promise<LazyEarlyActions> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const fifo = join(dir, 'actions.fifo');
    await promisify(execFile)('mkfifo', ['-m', '0600', fifo]);
    const scriptPath = join(dir, 'actions.sh');
    await writeFile(
      scriptPath,
      `#!/bin/sh
# written by haul for one lazy migration through Incus; see plugin/lazy-early-actions.ts
incus_script=${shellWord(incusScript)}
events=${shellWord(fifo)}
dump_dir=${shellWord(images.dumpDir)}
checkpoint_dir=${shellWord(images.checkpointDir)}
# the FIFO is opened read-write (1<>): a write never waits for a reader, so an agent that is gone
# cannot hold CRIU, and the frozen container, here
case "$CRTOOLS_SCRIPT_ACTION" in
  post-dump)
    # one mv for them all: a process per image cost 0.1 s of the freeze
    set --
    for image in "$dump_dir"/*; do
      case "\${image##*/}" in
        pages-*.img) ;;
        *) [ -e "$image" ] && set -- "$@" "$image" ;;
      esac
    done
    [ $# -eq 0 ] || mv -f -- "$@" "$checkpoint_dir"/ || exit 1
    echo post-dump 1<> "$events"
    setsid -f /bin/sh -c '"$1"; echo "incus-post-dump $?" 1<> "$2"' sh "$incus_script" "$events" </dev/null >/dev/null 2>&1
    exit 0 ;;
  status-ready)
    echo status-ready 1<> "$events"
    exec "$incus_script" ;;
  *)
    exec "$incus_script" ;;
esac
`,
    );
    await chmod(scriptPath, 0o700);
    // Read-write, so the open does not wait for a writer and the FIFO never reports an end; and
    // non-blocking, read through the event loop: a blocking read would hold one of libuv's four
    // file-system threads until the FIFO is written, and a few migrations would starve every
    // file operation of the agent.
    const fd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
    const stream = new Socket({ fd, readable: true, writable: false });
    let ready!: () => void;
    let dumped!: () => void;
    let postDump!: (status: number) => void;
    const statusReady = new Promise<void>((resolve) => (ready = resolve));
    const dumpOver = new Promise<void>((resolve) => (dumped = resolve));
    const incusPostDump = new Promise<number>((resolve) => (postDump = resolve));
    const lines = createInterface({ input: stream });
    lines.on('error', () => {});
    stream.on('error', () => {});
    lines.on('line', (line) => {
      if (line === 'status-ready') ready();
      if (line === 'post-dump') dumped();
      const status = /^incus-post-dump (\d+)$/.exec(line);
      if (status) postDump(Number(status[1]));
    });
    return new LazyEarlyActions(scriptPath, statusReady, dumpOver, incusPostDump, stream);
  }

  async close(): Promise<void> {
    this.events.destroy();
  }
}
