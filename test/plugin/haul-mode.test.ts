import { describe, expect, it } from 'vitest';
import { parseMode } from '../../proxy/index.js';
import { modeOf, parseHaulMode } from '../../plugin/haul-mode.js';
import type { IncusInstance } from '../../plugin/incus-client.js';

const instance = (mode: string | undefined): IncusInstance => ({
  name: 'c1', status: 'Running', config: {}, expanded_config: mode === undefined ? {} : { 'user.haul.mode': mode }, state: { pid: 1, status: 'Running' },
});

describe("an instance's user.haul.mode", () => {
  it('names pre-copy, lazy or off; precopy, its older spelling, still means pre-copy', () => {
    expect(modeOf(instance('pre-copy'), 'lazy')).toBe('pre-copy');
    expect(modeOf(instance('precopy'), 'lazy')).toBe('pre-copy');
    expect(modeOf(instance('lazy'), 'pre-copy')).toBe('lazy');
    expect(modeOf(instance('off'), 'pre-copy')).toBe('off');
  });

  it("falls back to the agent's default when unset or not a mode", () => {
    expect(modeOf(instance(undefined), 'lazy')).toBe('lazy');
    expect(modeOf(instance('Lazy'), 'pre-copy')).toBe('pre-copy');
    expect(parseHaulMode('post-copy')).toBeUndefined();
  });

  it('is never off on the link: a migration mode is pre-copy or lazy', () => {
    expect(parseMode('off')).toBeUndefined();
    expect(parseMode('lazy')).toBe('lazy');
  });
});
