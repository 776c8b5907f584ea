import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO } from '../support/paths.js';

/**
 * The layers, bottom up. A layer may import those below it, only through their index.ts; src/'s
 * loose modules (streams, names, shell words) are shared by every layer.
 */
const LAYERS = ['src/host', 'src/criu', 'src/link', 'proxy', 'plugin', 'cli'] as const;
const FACE = 'index.ts';

function sources(dir: string): string[] {
  return readdirSync(join(REPO, dir), { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sources(path);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts') ? [path] : [];
  });
}

function layerOf(path: string): (typeof LAYERS)[number] | undefined {
  return LAYERS.find((layer) => path === layer || path.startsWith(`${layer}/`));
}

/** Every relative import of the production sources, as repository paths. */
function imports(): Array<{ from: string; to: string }> {
  const found: Array<{ from: string; to: string }> = [];
  for (const from of ['src', 'proxy', 'plugin', 'cli', 'scripts'].flatMap(sources)) {
    const text = readFileSync(join(REPO, from), 'utf8');
    for (const match of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'";]*?\bfrom\s+'(\.[^']+)'/g)) {
      const to = relative(REPO, resolve(REPO, dirname(from), match[1]!)).replace(/\.js$/, '.ts');
      found.push({ from, to });
    }
  }
  return found;
}

describe('the layout', () => {
  const all = imports();

  it('finds the imports it checks', () => {
    expect(all.length).toBeGreaterThan(100);
  });

  it('lets a layer reach another only through its index.ts', () => {
    const crossings = all.filter(({ from, to }) => {
      const target = layerOf(to);
      return target !== undefined && target !== layerOf(from) && to !== `${target}/${FACE}`;
    });
    expect(crossings).toEqual([]);
  });

  it('points every import downwards: src/ knows nothing of proxy/, proxy/ nothing of plugin/, nothing imports cli/', () => {
    const upwards = all.filter(({ from, to }) => {
      const source = layerOf(from);
      const target = layerOf(to);
      if (target === undefined || source === undefined || source === target) return false;
      return LAYERS.indexOf(target) > LAYERS.indexOf(source);
    });
    expect(upwards).toEqual([]);
    expect(all.filter(({ from, to }) => layerOf(to) === 'cli' && layerOf(from) !== 'cli')).toEqual([]);
  });

  it('keeps src/link and src/criu apart', () => {
    const between = all.filter(({ from, to }) => {
      const pair = [layerOf(from), layerOf(to)];
      return pair.includes('src/link') && pair.includes('src/criu');
    });
    expect(between).toEqual([]);
  });
});
