import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * A file of this package that the compiler does not copy into dist/ (a .proto, a perl program), by
 * its path from the package root. Modules run from the sources (tests) or from dist/ (installed),
 * at different depths, so it walks up from the calling module to the first folder holding both a
 * package.json and that file.
 */
export function packageFile(relative: string, fromModule: string): string {
  for (let dir = dirname(fileURLToPath(fromModule)); ; dir = dirname(dir)) {
    const candidate = join(dir, relative);
    if (existsSync(join(dir, 'package.json')) && existsSync(candidate)) return candidate;
    if (dirname(dir) === dir) throw new Error(`haul's ${relative} was not found above ${fromModule}`);
  }
}
