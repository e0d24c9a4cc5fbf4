import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root, whether running from test/ (ts) or dist/test/ (compiled). */
export const ROOT = (() => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  return here.includes(`${path.sep}dist${path.sep}`) ? path.resolve(here, '../../..') : path.resolve(here, '../..');
})();
export const KMSD_BIN = path.join(ROOT, 'dist/src/bin/kmsd.js');
export const KMSCTL_BIN = path.join(ROOT, 'dist/src/bin/kmsctl.js');
export const SOFTHSM_LIB = process.env.SOFTHSM_LIB ?? '/usr/lib/softhsm/libsofthsm2.so';
export const TMP_ROOT = path.join(ROOT, 'tmp', 'test');
