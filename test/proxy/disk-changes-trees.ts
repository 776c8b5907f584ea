import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { Readable } from 'node:stream';
import tar from 'tar-stream';

/** A name as bytes, shown readably: printable ASCII as is, every other byte as \xNN. */
export function shownName(bytes: Buffer): string {
  return [...bytes].map((byte) => (byte >= 0x20 && byte < 0x7f && byte !== 0x5c ? String.fromCharCode(byte) : `\\x${byte.toString(16).padStart(2, '0')}`)).join('');
}

/**
 * path -> what a restored container would see there (type, content or target, mode, owner), with
 * names read as bytes, so that names that are not UTF-8 count as themselves.
 */
export function describeTreeBytes(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (relative: Buffer | undefined): void => {
    const directory = relative ? Buffer.concat([Buffer.from(`${root}/`), relative]) : Buffer.from(root);
    for (const name of readdirSync(directory, { encoding: 'buffer' }).sort(Buffer.compare)) {
      const path = relative ? Buffer.concat([relative, Buffer.from('/'), name]) : name;
      const full = Buffer.concat([Buffer.from(`${root}/`), path]);
      const info = lstatSync(full);
      const owner = `${(info.mode & 0o7777).toString(8)} ${info.uid}:${info.gid}`;
      const key = shownName(path);
      if (info.isDirectory()) {
        out[key] = `dir ${owner}`;
        walk(path);
      } else if (info.isSymbolicLink()) out[key] = `link->${shownName(readlinkSync(full, { encoding: 'buffer' }))} ${info.uid}:${info.gid}`;
      else out[key] = `file ${owner} ${readFileSync(full).toString('hex')}`;
    }
  };
  walk(undefined);
  return out;
}

export type HandMadeEntry = Partial<tar.Header> & { readonly name: string } & { readonly content?: string | Buffer };

/** A tar stream made by hand, as a hostile sender could make it; ended as the packer ends one unless told. */
export function handMadeTar(entries: readonly HandMadeEntry[], { ended = true } = {}): Readable {
  const pack = tar.pack();
  const end: HandMadeEntry[] = ended ? [{ name: '.', type: 'file', pax: { 'HAUL.end': '1' }, content: '' }] : [];
  for (const { content, ...header } of [...entries, ...end]) {
    if (content === undefined) pack.entry(header);
    else pack.entry(header, content);
  }
  pack.finalize();
  return Readable.from(pack, { objectMode: false });
}
