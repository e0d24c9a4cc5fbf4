import type { Logger } from 'winston';
import type { AuditLog } from '../audit/audit-log.js';
import { addDays, type Clock } from '../clock.js';
import { KmsError, keyState, validation } from '../errors.js';
import type { KeyService } from '../keys/key-service.js';
import { isAsymmetric, KEY_TYPES } from '../keys/key-types.js';
import type { KeyRecord, KeyVersion } from '../keys/model.js';
import type { ChangeFeed } from '../store/change-feed.js';
import type { Repositories, Store } from '../store/store.js';
import type { RegionRegistry } from '../token/regions.js';
import { canRotate, isDue, nextRotationAt } from './policy.js';

export type RotationTrigger = 'manual' | 'scheduled';

/** Throws (rolling the transaction back) when the key may no longer get this new version. */
type VersionGuard = (current: KeyRecord) => void;

const CLAIM_MS = 120_000;
const SCHEDULED_CHUNK = 32;

/**
 * Rotation = generate a new object in the token, then record it as the next version in one
 * store write transaction that re-reads the key and re-checks the rules (the compare-and-set).
 * Whoever loses that check destroys its object, so the store never names a missing object and a
 * due key gets exactly one new version however many daemons race for it.
 */
export class RotationService {
  private readonly perKey = new Map<string, Promise<unknown>>();
  private readonly claimOwner = `${process.pid}.${Math.random().toString(36).slice(2, 8)}`;

  constructor(
    private readonly store: Store,
    private readonly keys: KeyService,
    private readonly feed: ChangeFeed,
    private readonly regions: RegionRegistry,
    private readonly clock: Clock,
    private readonly audit: AuditLog,
    private readonly log: Logger,
    private readonly maxManualRotations: number,
    private readonly onRotated: (trigger: RotationTrigger, n: number) => void = () => {},
  ) {}

  /** Manual rotation; concurrent calls for one key queue up and each adds one version. */
  rotateManual(key: KeyRecord): Promise<KeyRecord> {
    if (key.isDefault) return Promise.reject(keyState('the default organisation key is rotated by the platform only'));
    if (!canRotate(key)) return Promise.reject(keyState('imported key without allowRotation cannot be rotated'));
    return this.serial(key.identity, async () => {
      const guard: VersionGuard = (cur) => {
        if (cur.status !== 'active') throw keyState(`key is ${cur.status}`);
        if (cur.manualRotations >= this.maxManualRotations)
          throw new KmsError('RotationLimitExceeded', `manual rotation limit of ${this.maxManualRotations} reached for this key`);
      };
      guard(key);
      const [v] = await this.addVersions([key], 'manual', () => guard);
      if (!v) throw keyState('rotation lost to a concurrent change, retry');
      await this.feed.publish();
      this.onRotated('manual', 1);
      // the key as this rotation committed it: the cache may already hold a later rotation
      // (another node's, replayed from the change feed), whose version the reply and the
      // audit record would otherwise name
      return v.key;
    });
  }

  /**
   * import-version (BYOK): like a manual rotation, but the new version's object comes from
   * `source` (an unwrap into the token under the given CKA_ID) and is recorded with origin
   * 'imported'; it does not count against the manual rotation limit.
   */
  addImportedVersion(key: KeyRecord, source: (ckaId: Buffer, label: string) => Promise<void>): Promise<KeyRecord> {
    return this.serial(key.identity, async () => {
      const guard: VersionGuard = (cur) => {
        if (cur.status !== 'active') throw keyState(`key is ${cur.status}`);
        if (!canRotate(cur)) throw keyState('imported key without allowRotation cannot get new versions');
      };
      const current = (await this.store.keys.load(key.identity)) ?? key;
      guard(current);
      const token = this.regions.require(key.region);
      const ckaId = this.keys.newObjectId(key.identity);
      let committed: KeyRecord | undefined;
      await source(Buffer.from(ckaId), `${key.slug}/v${current.latestVersion + 1}`);
      try {
        committed = await this.store.transaction(async (tx) => {
          await this.recordVersion(tx, key.identity, ckaId, 'import', guard, 'imported');
          return tx.keys.load(key.identity);
        });
      } catch (e) {
        await token.destroy(Buffer.from(ckaId)).catch((d) => this.log.warn('orphan left for reconciliation', { ckaId, error: String(d) }));
        throw e;
      }
      await this.feed.publish();
      return committed ?? this.keys.cache.get(key.identity)!;
    });
  }

  /** PATCH …/rotation. Absent keyRotationEnabled means false, as everywhere in the contract. */
  async updatePolicy(key: KeyRecord, input: { keyRotationEnabled?: boolean; rotationPeriodInDays?: number }, requestId?: string) {
    if (key.isDefault) throw keyState('the default organisation key has a platform-managed rotation schedule');
    const enabled = Boolean(input.keyRotationEnabled);
    if (enabled && !canRotate(key)) throw keyState('imported key without allowRotation cannot rotate');
    const period = input.rotationPeriodInDays ?? key.rotationPeriodDays;
    if (enabled && !period) throw validation('rotationPeriodInDays: required when keyRotationEnabled is true');
    let updated = await this.keys.mutate(key, (k) => ({
      rotationEnabled: enabled,
      rotationPeriodDays: period ?? null,
      nextRotationAt: nextRotationAt(k, enabled, period ?? null),
    }));
    // A recalculated date already in the past rotates at once, then follows the new schedule.
    if (isDue(updated, this.clock.nowIso())) {
      const done = await this.rotateKeys([updated], requestId);
      if (done) updated = this.keys.cache.get(key.identity)!;
    }
    return updated;
  }

  /** One evaluation: every due, active key gets exactly one new version. */
  async rotateDue(): Promise<number> {
    let total = 0;
    for (;;) {
      const claimed = await this.claimDue(SCHEDULED_CHUNK);
      if (!claimed.length) break;
      total += await this.rotateKeys(claimed);
    }
    return total;
  }

  private async rotateKeys(keys: KeyRecord[], requestId?: string): Promise<number> {
    const nowIso = this.clock.nowIso();
    const observed = new Map(keys.map((k) => [k.identity, k.latestVersion]));
    const versions = await this.addVersions(keys, 'scheduled', (k) => (cur) => {
      if (cur.latestVersion !== observed.get(k.identity) || !isDue(cur, nowIso) || !canRotate(cur))
        throw keyState('no longer due');
    });
    const rotated = versions.filter((v): v is { key: KeyRecord; version: number } => v !== undefined);
    if (rotated.length) {
      await this.feed.publish();
      this.onRotated('scheduled', rotated.length);
    }
    await Promise.all(
      rotated.map(({ key, version }) =>
        this.audit.record({
          action: 'kms.rotate.scheduled',
          outcome: 'success',
          region: key.region,
          keyIdentity: key.identity,
          keyVersion: String(version),
          organisation: key.organisation,
          principal: 'kmsd',
          requestId: requestId ?? null,
        }),
      ),
    );
    return rotated.length;
  }

  /** Claims up to `limit` due keys for this process (real-time lease) so daemons do not duplicate token work. */
  private async claimDue(limit: number): Promise<KeyRecord[]> {
    const nowIso = this.clock.nowIso();
    const nowMs = Date.now();
    const ids = await this.store.transaction((tx) => tx.keys.claimDue(nowIso, nowMs, this.claimOwner, nowMs + CLAIM_MS, limit));
    const keys: KeyRecord[] = [];
    for (const id of ids) {
      const k = await this.store.keys.load(id);
      if (k && canRotate(k) && this.regions.tokens.get(k.region)?.available) keys.push(k);
      else await this.releaseClaim(id, nowMs + CLAIM_MS);
    }
    return keys;
  }

  private async releaseClaim(identity: string, untilMs = 0): Promise<void> {
    await this.store.keys.releaseClaim(identity, this.claimOwner, untilMs);
  }

  /**
   * Generates one object per key in the token (in parallel), then records them all in one
   * transaction; each key's guard re-checks the committed state and failures destroy their object.
   */
  private async addVersions(
    keys: KeyRecord[],
    trigger: RotationTrigger,
    guardFor: (k: KeyRecord) => VersionGuard,
  ): Promise<({ key: KeyRecord; version: number } | undefined)[]> {
    const made = await Promise.all(
      keys.map(async (k) => {
        const token = this.regions.require(k.region);
        const ckaId = this.keys.newObjectId(k.identity);
        const generate = () =>
          token.generate(KEY_TYPES[k.keyType].token, {
            ckaId: Buffer.from(ckaId),
            label: `${k.slug}/v${k.latestVersion + 1}`,
            extractable: k.exportAllowed,
          });
        // Key pairs take the organisation's fair turn on the token; the daemon's scheduled rotations wait but are never refused.
        if (isAsymmetric(k.keyType)) await this.keys.pairWork(k.organisation, k.region, generate, { bounded: trigger === 'manual' });
        else await generate();
        return { key: k, ckaId, token };
      }),
    );
    const outcome: ({ key: KeyRecord; version: number } | undefined)[] = [];
    let failure: unknown;
    await this.store.transaction(async (tx) => {
      for (const m of made) {
        try {
          const version = await this.recordVersion(tx, m.key.identity, m.ckaId, trigger, guardFor(m.key));
          // a manual rotation answers with the key as it committed it (read inside the transaction)
          outcome.push({ key: trigger === 'manual' ? ((await tx.keys.load(m.key.identity)) ?? m.key) : m.key, version });
        } catch (e) {
          outcome.push(undefined);
          failure ??= e;
        }
      }
    });
    await Promise.all(
      made.map(async (m, i) => {
        if (!outcome[i]) await m.token.destroy(Buffer.from(m.ckaId)).catch((e) => this.log.warn('orphan left for reconciliation', { ckaId: m.ckaId, error: String(e) }));
      }),
    );
    if (trigger === 'manual' && failure) throw failure;
    return outcome;
  }

  private async recordVersion(
    tx: Repositories,
    identity: string,
    ckaId: string,
    trigger: RotationTrigger | 'import',
    guard: VersionGuard,
    origin: KeyVersion['origin'] = 'generated',
  ): Promise<number> {
    const cur = await tx.keys.load(identity);
    if (!cur) throw keyState('key no longer exists');
    guard(cur);
    const now = this.clock.nowIso();
    const version = cur.latestVersion + 1;
    await tx.keys.insertVersion(identity, { version, ckaId, status: 'enabled', origin, createdAt: now });
    const ok = await tx.keys.update(identity, cur.objectVersion, {
      latestVersion: version,
      lastRotationAt: now,
      nextRotationAt: cur.rotationEnabled && cur.rotationPeriodDays ? addDays(now, cur.rotationPeriodDays) : cur.nextRotationAt,
      manualRotations: cur.manualRotations + (trigger === 'manual' ? 1 : 0),
      updatedAt: now,
    });
    if (!ok) throw keyState('concurrent change');
    await tx.keys.clearClaim(identity);
    return version;
  }

  private serial<T>(identity: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.perKey.get(identity) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => {});
    this.perKey.set(identity, tail);
    void tail.then(() => {
      if (this.perKey.get(identity) === tail) this.perKey.delete(identity);
    });
    return next;
  }
}
