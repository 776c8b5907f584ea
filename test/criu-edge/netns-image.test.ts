import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { encodeImage, ImageReader } from '../../src/criu/images/image-file.js';
import { TypeMagic } from '../../src/criu/images/magic.js';
import { isNetnsImageName, netnsImageForEveryCriu } from '../../src/criu/images/netns.js';
import { Entries, ImageFormatError, type NetnsEntryMessage } from '../../src/criu/images/schemas.js';

const NETNS = { kind: 'common', typeMagic: TypeMagic.NETNS } as const;
const CTL_STR = 5; // images/sysctl.proto SysctlType
const CTL_32 = 6;

/** A network namespace's entry as CRIU 4.2 dumps it, its ipv4 sysctls as given. */
function netnsImage(ipv4: NetnsEntryMessage['ipv4_sysctl']): Buffer {
  const entry = {
    def_conf4: [{ type: CTL_32, iarg: 1 }, { type: CTL_32, iarg: 0 }],
    all_conf4: [{ type: CTL_32, iarg: 1 }],
    unix_conf: [{ type: CTL_32, iarg: 10 }],
    ipv4_sysctl: ipv4,
  } as unknown as NetnsEntryMessage;
  return encodeImage(NETNS, [Entries.netnsEntry.encode(entry)]);
}

async function entryOf(image: Buffer): Promise<NetnsEntryMessage> {
  const reader = await ImageReader.open(Readable.from([image]), 'netns-9.img', NETNS);
  const bytes = await reader.next();
  reader.close();
  return Entries.netnsEntry.decode(bytes!);
}

describe("a network namespace's image, for a CRIU 4.1 destination", () => {
  it("drops the ping_group_range CRIU 4.2 leaves without a value (the kernel's default), and nothing else", async () => {
    const rewritten = await netnsImageForEveryCriu(netnsImage([{ type: CTL_STR }] as NetnsEntryMessage['ipv4_sysctl']), 'netns-9.img');
    expect(rewritten).toBeDefined();
    const entry = await entryOf(rewritten!);
    expect(entry.ipv4_sysctl ?? []).toEqual([]);
    expect(entry.def_conf4).toEqual([{ type: CTL_32, iarg: 1 }, { type: CTL_32, iarg: 0 }]);
    expect(entry.all_conf4).toEqual([{ type: CTL_32, iarg: 1 }]);
    expect(entry.unix_conf).toEqual([{ type: CTL_32, iarg: 10 }]);
  });

  it('leaves an image whose sysctls all carry a value as it is (CRIU 4.1 dumps them so)', async () => {
    expect(await netnsImageForEveryCriu(netnsImage([{ type: CTL_STR, sarg: '0\t2147483647' }] as NetnsEntryMessage['ipv4_sysctl']), 'netns-9.img')).toBeUndefined();
    expect(await netnsImageForEveryCriu(netnsImage([] as unknown as NetnsEntryMessage['ipv4_sysctl']), 'netns-9.img')).toBeUndefined();
  });

  it('refuses what is not a network namespace image', async () => {
    await expect(netnsImageForEveryCriu(encodeImage({ kind: 'common', typeMagic: TypeMagic.PSTREE }, []), 'netns-9.img')).rejects.toThrow(ImageFormatError);
    await expect(netnsImageForEveryCriu(encodeImage(NETNS, []), 'netns-9.img')).rejects.toThrow(/without its entry/);
  });

  it('knows its name from the conntrack and expectation images beside it', () => {
    expect(isNetnsImageName('netns-9.img')).toBe(true);
    expect(isNetnsImageName('netns-ct-9.img')).toBe(false);
    expect(isNetnsImageName('netns-exp-9.img')).toBe(false);
    expect(isNetnsImageName('netns-9.img/../x')).toBe(false);
  });
});
