import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The folder of .proto files at `src/<relative>` in this package. Modules run from the sources (tests)
 * or from dist/ (installed), and the compiler does not copy .proto files, so it walks up from the
 * calling module to the package root.
 */
export function schemaDirectory(relative: string, fromModule: string, probe: string): string {
  for (let dir = dirname(fileURLToPath(fromModule)); ; dir = dirname(dir)) {
    const candidate = join(dir, 'src', relative);
    if (existsSync(join(dir, 'package.json')) && existsSync(join(candidate, probe))) return candidate;
    if (dirname(dir) === dir) throw new Error(`haul's schemas (src/${relative}/${probe}) were not found above ${fromModule}`);
  }
}
