import type { Logger } from 'winston';
import { localProcessAlive, type CreatorAlive } from '../cluster/liveness.js';
import { KEY_OBJECT_PREFIX } from '../keys/key-service.js';
import type { KeysRepository } from '../store/store.js';
import type { RegionToken } from '../token/region-token.js';

const IN_FLIGHT_GRACE_MS = 10 * 60_000;

export interface ReconcileResult {
  destroyed: number;
  inFlight: number;
}

/**
 * Finds token objects carrying this installation's key CKA_ID
 * (`kmsd/k/<key>/<ms>.<pid>.<rand>@<installation>`) that no
 * version row in the store names. Rule (documented in the README): such an object was generated
 * but never recorded, so no ciphertext or signature was ever made with it; it is **destroyed**,
 * never adopted — once its creator process is gone (in cluster mode: its node's lease expired) or after 10 minutes; while the creator
 * still runs it is counted as in flight and looked at again on the next pass.
 */
export async function reconcileRegion(
  token: RegionToken,
  repo: KeysRepository,
  log: Logger,
  startedAtMs: number,
  installation: string,
  creatorAlive: CreatorAlive = localProcessAlive,
): Promise<ReconcileResult> {
  const known = await repo.allCkaIds();
  const res: ReconcileResult = { destroyed: 0, inFlight: 0 };
  for (const id of token.listObjectIds(Buffer.from(KEY_OBJECT_PREFIX))) {
    const text = id.toString();
    if (known.has(text)) continue;
    const m = /\/(\d+)\.(\d+)\.[0-9a-f]+@([0-9a-f]+)$/.exec(text);
    // Another installation's object (or one this rule cannot read) is never ours to destroy.
    if (!m || m[3] !== installation) continue;
    const createdMs = Number(m[1]);
    const pid = Number(m[2]);
    const ownEarlierLife = pid === process.pid && createdMs < startedAtMs;
    const orphan = ownEarlierLife || Date.now() - createdMs > IN_FLIGHT_GRACE_MS || !(await creatorAlive(pid));
    if (!orphan) {
      res.inFlight++;
      continue;
    }
    // Re-check right before destroying: the creator may have recorded it in the meantime.
    if ((await repo.allCkaIds()).has(text)) continue;
    await token.destroy(id);
    res.destroyed++;
    log.warn('destroyed orphaned token object (generated, never recorded)', { region: token.settings.region, ckaId: text });
  }
  return res;
}
