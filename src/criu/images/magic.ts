/**
 * Image magics (criu/include/magic.h). A regular image starts with IMG_COMMON_MAGIC and its type's
 * magic; service images (stats, irmap-cache) with IMG_SERVICE_MAGIC instead; inventory.img with its
 * own magic alone; raw images (pages-*.img, tmpfs tarballs, netfilter dumps) with none.
 */
export const IMG_COMMON_MAGIC = 0x54564319;
export const IMG_SERVICE_MAGIC = 0x55105940;
export const INVENTORY_MAGIC = 0x58313116;

export const TypeMagic = {
  PSTREE: 0x50273030,
  PAGEMAP: 0x56084025,
  CORE: 0x55053847,
  IDS: 0x54432030,
  MM: 0x57492820,
  FDINFO: 0x56213732,
  FILES: 0x56303138,
  STATS: 0x57093306,
  NETNS: 0x55933752,
} as const;

/** How an image file starts. */
export type ImageHeader =
  | { readonly kind: 'inventory' }
  | { readonly kind: 'common'; readonly typeMagic: number }
  | { readonly kind: 'service'; readonly typeMagic: number };

export function headerBytes(header: ImageHeader): Buffer {
  if (header.kind === 'inventory') {
    const bytes = Buffer.alloc(4);
    bytes.writeUInt32LE(INVENTORY_MAGIC, 0);
    return bytes;
  }
  const bytes = Buffer.alloc(8);
  bytes.writeUInt32LE(header.kind === 'common' ? IMG_COMMON_MAGIC : IMG_SERVICE_MAGIC, 0);
  bytes.writeUInt32LE(header.typeMagic, 4);
  return bytes;
}
