import { open, readdir, rename, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { ImageReader, encodeImage } from './image-file.js';
import { TypeMagic, type ImageHeader } from './magic.js';
import { Entries, ImageFormatError } from './schemas.js';

const NETNS_HEADER: ImageHeader = { kind: 'common', typeMagic: TypeMagic.NETNS };

/** A network namespace's image holds a few sysctls and ids: far below this. */
const MAX_NETNS_IMAGE_BYTES = 1024 * 1024;

/**
 * The bytes of an open netns-<id>.img of `size` bytes (named `source` in errors), read whole since
 * it is small: one larger than a network namespace's image could be is refused unread.
 */
export async function readNetnsImage(file: FileHandle, size: number, source: string): Promise<Buffer> {
  if (size > MAX_NETNS_IMAGE_BYTES) throw new ImageFormatError(`${source} holds ${size} bytes: not a network namespace's image`);
  const bytes = Buffer.alloc(size);
  let at = 0;
  for (let read = -1; read !== 0 && at < size; at += read) read = (await file.read(bytes, at, size - at, at)).bytesRead;
  return bytes.subarray(0, at);
}

/** A network namespace's image, netns-<id>.img (criu/image-desc.c); not netns-ct- or netns-exp-. */
export function isNetnsImageName(name: string): boolean {
  return /^netns-[0-9]{1,10}\.img$/.test(name);
}

/**
 * `image` (a netns-<id>.img, named `source` in errors) in the form every CRIU restores, or
 * undefined when it is in that form already. CRIU 4.2 dumps net.ipv4.ping_group_range as an
 * entry without a value when it holds the kernel's default ("1 0"), meaning "leave it"; CRIU 4.1
 * still asks the kernel to write every entry, with no value for that one, and the whole restore of
 * a container with its own network namespace fails ("Failed to write net/ipv4/<sysctls>";
 * criu/net.c ipv4_sysctls_op in both). Both skip the ipv4 sysctls when there are none
 * (restore_netns_conf), so the entries without a value are dropped: for CRIU 4.2 nothing changes.
 * Nothing else of the entry changes, but fields this schema (CRIU 4.2's) does not know are lost,
 * so an image is only rewritten when it has such an entry.
 */
export async function netnsImageForEveryCriu(image: Buffer, source: string): Promise<Buffer | undefined> {
  const reader = await ImageReader.open(Readable.from([image]), source, NETNS_HEADER);
  const entries: Buffer[] = [];
  let changed = false;
  try {
    for await (const bytes of reader.entries()) {
      const entry = Entries.netnsEntry.decode(bytes);
      const sysctls = entry.ipv4_sysctl ?? [];
      const kept = sysctls.filter((sysctl) => sysctl.sarg !== undefined);
      if (kept.length === sysctls.length) {
        entries.push(bytes);
        continue;
      }
      changed = true;
      entries.push(Entries.netnsEntry.encode({ ...entry, ipv4_sysctl: kept }));
    }
  } finally {
    reader.close();
  }
  if (entries.length === 0) throw new ImageFormatError(`${source}: a network namespace image without its entry`);
  return changed ? encodeImage(NETNS_HEADER, entries) : undefined;
}

/**
 * Every netns-<id>.img in `dir`, a directory of haul's own, in the form every CRIU restores
 * (netnsImageForEveryCriu): each one that changes is written anew beside the old, then renamed
 * over it. Resolves how many were rewritten.
 */
export async function writeNetnsImagesForEveryCriu(dir: string): Promise<number> {
  let rewritten = 0;
  for (const name of (await readdir(dir)).filter(isNetnsImageName)) {
    const path = join(dir, name);
    const file = await open(path, 'r');
    let image: Buffer;
    try {
      image = await readNetnsImage(file, (await file.stat()).size, path);
    } finally {
      await file.close();
    }
    const rewrittenImage = await netnsImageForEveryCriu(image, path);
    if (!rewrittenImage) continue;
    const temporary = `${path}.compat`;
    await rm(temporary, { force: true });
    await writeFile(temporary, rewrittenImage, { flag: 'wx', mode: 0o644 });
    await rename(temporary, path);
    rewritten++;
  }
  return rewritten;
}
