import type { OwnerIds } from '../proxy/index.js';
import type { IncusInstance } from './incus-client.js';

/** Incus' idmap entry (shared/idmap IdmapEntry, as JSON in volatile.*.idmap keys). */
interface IdmapEntry {
  readonly Isuid?: boolean;
  readonly Isgid?: boolean;
  readonly Hostid?: number;
  readonly Maprange?: number;
}

/**
 * The host ids an instance's files may be owned by: its id map as its root filesystem is written
 * (volatile.last_state.idmap, else the current one); undefined for a privileged container, whose
 * root is the host's. Throws when an unprivileged one has no map haul can read: then no bound is
 * known, and nothing should be written for it.
 */
export function ownerIdsOf(instance: IncusInstance): OwnerIds | undefined {
  const config = instance.expanded_config ?? instance.config;
  if (config['security.privileged'] === 'true') return undefined;
  const text = config['volatile.last_state.idmap'] || config['volatile.idmap.current'];
  let entries: unknown;
  try {
    entries = JSON.parse(text ?? '');
  } catch {
    entries = undefined;
  }
  if (!Array.isArray(entries) || entries.length === 0) throw new Error(`${instance.name} is unprivileged but has no id map haul can read (volatile.last_state.idmap, volatile.idmap.current)`);
  const ranges = (entries as IdmapEntry[]).filter((entry) => Number.isSafeInteger(entry.Hostid) && Number.isSafeInteger(entry.Maprange) && entry.Maprange! > 0);
  const rangesOf = (kind: 'Isuid' | 'Isgid') => ranges.filter((entry) => entry[kind]).map((entry) => ({ first: entry.Hostid!, count: entry.Maprange! }));
  return { uids: rangesOf('Isuid'), gids: rangesOf('Isgid') };
}
