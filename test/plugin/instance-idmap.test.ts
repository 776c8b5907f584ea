import { describe, expect, it } from 'vitest';
import type { IncusInstance } from '../../plugin/incus-client.js';
import { ownerIdsOf } from '../../plugin/instance-idmap.js';

const instance = (config: Record<string, string>): IncusInstance => ({ name: 'c1', status: 'Running', config: {}, expanded_config: config });
const MAP = '[{"Isuid":true,"Isgid":false,"Hostid":1000000,"Nsid":0,"Maprange":1000000000},{"Isuid":false,"Isgid":true,"Hostid":2000000,"Nsid":0,"Maprange":65536}]';

describe('the ids a container may own files by, from its Incus config', () => {
  it("reads the map its root filesystem is written in, uids and gids apart", () => {
    expect(ownerIdsOf(instance({ 'volatile.last_state.idmap': MAP, 'volatile.idmap.current': '[]' }))).toEqual({
      uids: [{ first: 1_000_000, count: 1_000_000_000 }],
      gids: [{ first: 2_000_000, count: 65536 }],
    });
  });

  it('bounds nothing for a privileged container, whose root is the host root', () => {
    expect(ownerIdsOf(instance({ 'security.privileged': 'true' }))).toBeUndefined();
  });

  it('refuses an unprivileged container whose map it cannot read, rather than bound nothing', () => {
    expect(() => ownerIdsOf(instance({}))).toThrow(/no id map/);
    expect(() => ownerIdsOf(instance({ 'volatile.last_state.idmap': 'not json' }))).toThrow(/no id map/);
  });
});
