import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { type LinkSession } from '../src/link/index.js';
import { criuImageName } from '../src/criu/index.js';
import { ChannelKind, openChannel } from './wire/index.js';

export interface SentImages {
  readonly files: number;
  readonly bytes: number;
}

/**
 * Sends a dump directory's image files to the cache, one channel each, streamed from disk. Logs
 * are not images and stay behind; so does every file `only` (when given) turns down. A file not
 * named as CRIU names its images fails the whole set (BadNameError), before any is sent.
 */
export async function sendImageFiles(session: LinkSession, dir: string, only: (name: string) => boolean = () => true): Promise<SentImages> {
  const names = (await readdir(dir)).filter((name) => !name.endsWith('.log') && only(name)).sort();
  // the cache takes only CRIU's image names: say so here, before anything is sent
  names.forEach(criuImageName);
  let bytes = 0;
  let files = 0;
  await Promise.all(
    names.map(async (name) => {
      const info = await stat(join(dir, name));
      if (!info.isFile()) return;
      files++;
      bytes += info.size;
      await pipeline(createReadStream(join(dir, name)), openChannel(session, ChannelKind.IMAGE_FILE, name).writable);
    }),
  );
  return { files, bytes };
}
