/**
 * Exercises the background build of RegionToken's object index on a real SoftHSM2 token, in
 * its own process (SoftHSM2 reads SOFTHSM2_CONF at C_Initialize), and reports what it saw as
 * JSON. usage: node index-probe.js LABEL PIN COUNT
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { RegionToken } from '../../src/token/region-token.js';
import { TokenError } from '../../src/token/errors.js';
import { throughReread } from '../../src/token/reread.js';
import { SOFTHSM_LIB } from './paths.js';
import type { TestStack } from './stack.js';

export interface IndexProbeReport {
  objects: number;
  /** right after connect({ background: true }) */
  atConnect: { available: boolean; indexedAll: boolean };
  /** an encrypt with the last key made, before the index holds it: the error says to wait */
  missWhileBuilding: { waitable: boolean };
  /** the same encrypt through throughReread: it waited for the build and worked */
  afterWaiting: { encrypts: boolean };
  /** after `indexed` settled */
  built: { objectCount: number; listed: number };
  /** a key destroyed while the index was being built does not come back from the scan */
  destroyedDuringBuild: { listed: boolean; exists: boolean };
}

export function probeIndex(stack: TestStack, label: string, count: number): IndexProbeReport {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), label, '1234', String(count)], { env: stack.env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`index-probe failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as IndexProbeReport;
}

async function main(label: string, pin: string, count: number): Promise<IndexProbeReport> {
  const settings = { region: 'probe', modulePath: SOFTHSM_LIB, label, pin, sessions: 2, workingCopies: 0 };
  const maker = new RegionToken(settings);
  maker.connect();
  const prefix = Buffer.from(`probe/i/${randomBytes(3).toString('hex')}/`);
  const ids: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const id = Buffer.concat([prefix, Buffer.from(String(i).padStart(5, '0'))]);
    await maker.generate({ kind: 'aes', bytes: 32 }, { ckaId: id, label: 'probe', extractable: false });
    ids.push(id);
  }
  maker.close();

  const t = new RegionToken(settings);
  t.connect({ background: true });
  const report: Partial<IndexProbeReport> = { objects: count };
  report.atConnect = { available: t.available, indexedAll: t.listObjectIds(prefix).length === count };
  const last = ids[ids.length - 1]!;
  const encrypt = () => t.aesGcmEncrypt(last, randomBytes(12), Buffer.alloc(0), Buffer.from('hi'));
  try {
    encrypt();
    report.missWhileBuilding = { waitable: false };
  } catch (e) {
    report.missWhileBuilding = { waitable: e instanceof TokenError && e.rereading !== undefined };
  }
  report.afterWaiting = { encrypts: (await throughReread(encrypt)).length === 2 + 16 };
  await t.indexed;
  report.built = { objectCount: t.objectCount, listed: t.listObjectIds(prefix).length };

  // destroyed while a new build runs
  t.connect({ background: true });
  await t.destroy(ids[0]!);
  await t.indexed;
  const listed = t.listObjectIds(prefix).some((id) => id.equals(ids[0]!));
  report.destroyedDuringBuild = { listed, exists: t.exists(ids[0]!, 'secret') };
  for (const id of ids.slice(1)) await t.destroy(id);
  t.close();
  return report as IndexProbeReport;
}

if (process.argv[1] === fileURLToPath(import.meta.url))
  main(process.argv[2]!, process.argv[3]!, Number(process.argv[4])).then(
    (r) => process.stdout.write(JSON.stringify(r)),
    (e) => {
      process.stderr.write(String((e as Error)?.stack ?? e));
      process.exit(1);
    },
  );
