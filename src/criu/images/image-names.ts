import { NAME_MAX, checkedName } from '../../name-grammars.js';

// CRIU's image names (criu/image-desc.c imgset_template): lower-case words and numbers (decimal, or
// hex for ghost-file and tcp-stream) joined by '-', then ".img", tmpfs ones ".tar.gz.img"; and the
// two service files without a suffix, stats-dump / stats-restore and irmap-cache.
const CRIU_IMAGE_NAME = /^(?:[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?:\.tar\.gz)?\.img|stats-(?:dump|restore)|irmap-cache)$/;

/** `value` if it is a file name CRIU writes into an image directory, else BadNameError. */
export function criuImageName(value: unknown): string {
  return checkedName('CRIU image file name', value, CRIU_IMAGE_NAME, "a CRIU image is named like core-1.img: lower-case words and numbers joined by '-', then .img (or stats-dump, stats-restore, irmap-cache)");
}

export function isCriuImageName(value: string): boolean {
  return value.length <= NAME_MAX && CRIU_IMAGE_NAME.test(value);
}
