/**
 * How a migration moves memory. pre-copy: every page reaches the destination before it restores,
 * and the source stays frozen until then. lazy (post-copy): the destination restores from the small
 * images at once and faults its memory in from the source, which ends once every page has moved.
 */
export type Mode = 'pre-copy' | 'lazy';

export const MODES: readonly Mode[] = ['pre-copy', 'lazy'];

/**
 * `text` as a mode, or undefined. 'precopy' is the spelling haul's Incus settings took before the
 * mode had one name everywhere; it still means pre-copy, so that no existing setting changes meaning.
 */
export function parseMode(text: string | undefined): Mode | undefined {
  if (text === 'pre-copy' || text === 'precopy') return 'pre-copy';
  if (text === 'lazy') return 'lazy';
  return undefined;
}
