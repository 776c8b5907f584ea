import { readFileSync, readdirSync } from 'node:fs';
import { Readable } from 'node:stream';
import { expect, it } from 'vitest';
import { encodeImage, ImageReader } from '../../src/criu/images/image-file.js';
import { TypeMagic, type ImageHeader } from '../../src/criu/images/magic.js';
import { PAGEMAP_HEADER } from '../../src/criu/images/pagemap.js';
import { Entries, type EntryCodec } from '../../src/criu/images/schemas.js';
import { runCriu } from '../../src/criu/run/criu-process.js';
import { describeOnHost } from '../support/host.js';
import { useMigrationScenes } from '../support/migration-scene.js';
import { CRIU_VERSION } from '../support/paths.js';

/** Decodes every entry of an image file with its schema, encodes it again, and rebuilds the file. */
async function reencode(path: string, header: ImageHeader, codecs: readonly EntryCodec<unknown>[]): Promise<{ bytes: Buffer; messages: unknown[] }> {
  const image = await ImageReader.open(Readable.from([readFileSync(path)]), path, header);
  const entries: Buffer[] = [];
  const messages: unknown[] = [];
  let index = 0;
  for await (const entry of image.entries()) {
    const codec = codecs[Math.min(index++, codecs.length - 1)]!;
    const message = codec.decode(entry);
    messages.push(message);
    entries.push(codec.encode(message));
  }
  return { bytes: encodeImage(header, entries), messages };
}

describeOnHost(`CRIU ${CRIU_VERSION} images through haul's schemas`, ['root', 'criu', 'workload'], () => {
  const scenes = useMigrationScenes();

  it('decode and re-encode byte for byte: inventory, pstree, pagemaps and stats', async () => {
    const { source: images, workload } = await scenes.start('images', 8);
    await runCriu('dump', ['-t', String(workload.pid), '-D', images], { logFile: `${images}/dump.log` });
    await workload.exited;

    const inventory = await reencode(`${images}/inventory.img`, { kind: 'inventory' }, [Entries.inventoryEntry]);
    expect(inventory.bytes).toEqual(readFileSync(`${images}/inventory.img`));
    expect(inventory.messages[0]).toMatchObject({ img_version: 2 });

    const pstree = await reencode(`${images}/pstree.img`, { kind: 'common', typeMagic: TypeMagic.PSTREE }, [Entries.pstreeEntry]);
    expect(pstree.bytes).toEqual(readFileSync(`${images}/pstree.img`));
    // the root of a dumped tree has no parent inside it
    expect(pstree.messages).toEqual([{ pid: workload.pid, ppid: 0, pgid: workload.pid, sid: workload.pid, threads: [workload.pid] }]);

    const pagemaps = readdirSync(images).filter((name) => name.startsWith('pagemap-'));
    expect(pagemaps.length).toBeGreaterThan(0);
    for (const name of pagemaps) {
      const pagemap = await reencode(`${images}/${name}`, PAGEMAP_HEADER, [Entries.pagemapHead, Entries.pagemapEntry]);
      expect(pagemap.bytes).toEqual(readFileSync(`${images}/${name}`));
    }

    const stats = await reencode(`${images}/stats-dump`, { kind: 'service', typeMagic: TypeMagic.STATS }, [Entries.statsEntry]);
    expect(stats.bytes).toEqual(readFileSync(`${images}/stats-dump`));
    const written = (stats.messages[0] as { dump: { pages_written: bigint } }).dump.pages_written;
    expect(written).toBeGreaterThanOrEqual(BigInt((8 * 1024 * 1024) / 4096));
  });
});
