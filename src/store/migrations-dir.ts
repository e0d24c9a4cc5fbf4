import { readdirSync } from 'node:fs';
import path from 'node:path';

/**
 * Where a store's migrations are read from: they ship as .sql next to the TypeScript sources (not
 * copied into dist/), so dist/src/store/<backend>/migrations → src/store/<backend>/migrations when
 * that folder exists; otherwise `compiledDir` itself.
 */
export function sourceMigrationsDir(compiledDir: string): string {
  const fromDist = compiledDir.replace(`${path.sep}dist${path.sep}src${path.sep}`, `${path.sep}src${path.sep}`);
  try {
    readdirSync(fromDist);
    return fromDist;
  } catch {
    return compiledDir;
  }
}
