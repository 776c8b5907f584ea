import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface PackageInfo {
  readonly name: string;
  readonly version: string;
  readonly description: string;
}

/**
 * haul's own package.json, found by walking up from this module: the CLI runs both from the sources
 * (tests) and from dist/ (installed), at different depths below the package root.
 */
export function readPackageInfo(from: string = fileURLToPath(import.meta.url)): PackageInfo {
  for (let dir = dirname(from); ; dir = dirname(dir)) {
    try {
      const parsed = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as Partial<PackageInfo>;
      if (parsed.name === 'haul' && typeof parsed.version === 'string') {
        return { name: parsed.name, version: parsed.version, description: parsed.description ?? '' };
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    if (dirname(dir) === dir) throw new Error(`haul's package.json not found above ${from}`);
  }
}
