import { randomBytes } from 'node:crypto';
import type { Logger } from 'winston';
import type { AuditLog } from '../audit/audit-log.js';
import { addDays, type Clock } from '../clock.js';
import { KmsError, keyState, notFound, unsupported, validation } from '../errors.js';
import type { ChangeFeed } from '../store/change-feed.js';
import { UniqueViolation, type KeyPatch, type Store } from '../store/store.js';
import { KEYGEN_CONCURRENCY, KEYGEN_MAX_PENDING_PER_ORGANISATION, TokenWorkQueues, type RunOptions } from '../token/fair-work-queue.js';
import type { RegionRegistry } from '../token/regions.js';
import type { KeyCache } from './key-cache.js';
import { isAsymmetric, KEY_TYPES, type KeyType } from './key-types.js';
import { slugify, type KeyRecord, type KeyStatus } from './model.js';

export interface Scope {
  organisation: string;
  region: string;
  /** '' for organisation-scoped keys. */
  project: string;
}

export interface CreateKeyInput {
  name: string;
  keyType: KeyType;
  description?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  exportAllowed?: boolean;
  keyRotationEnabled?: boolean;
  rotationPeriodInDays?: number;
  allowRotation?: boolean;
}

/** How version 1 comes into the token: generated there (default) or unwrapped there (BYOK). */
export type MaterialSource = (ckaId: Buffer) => Promise<void>;

export const DEFAULT_KEY_SLUG = 'default';
const DEFAULT_KEY_ROTATION_DAYS = 365;
export const KEY_OBJECT_PREFIX = 'kmsd/k/';

/**
 * CKA_ID of a key version object: `kmsd/k/<identity>/<created ms>.<pid>.<random>@<installation>`.
 * The creation time and creator pid let reconciliation tell an orphan (creator dead or old)
 * from an object another live process is about to record; the installation id (one per data
 * dir) keeps two kmsd installations that share a token from ever touching each other's objects.
 */
export function objectIdFor(identity: string, installation: string): string {
  return `${KEY_OBJECT_PREFIX}${identity}/${Date.now()}.${process.pid}.${randomBytes(4).toString('hex')}@${installation}`;
}

export function newIdentity(): string {
  return `kms-${randomBytes(10).toString('hex')}`;
}

function matchesLabels(labels: Record<string, string>, wanted: Map<string, string>): boolean {
  for (const [l, v] of wanted) if (!Object.hasOwn(labels, l) || labels[l] !== v) return false;
  return true;
}

export interface ListFilter {
  identity?: string;
  name?: string;
  slug?: string;
  status?: string;
  /** Every entry must be an own label of the key with exactly this value. */
  labels?: Map<string, string>;
}

/**
 * `identity`: an identity chosen by the caller (the AWS API records a key's AWS attributes under
 * it before the key exists); default a fresh one.
 */
export interface CreateKeyOptions {
  source?: MaterialSource;
  imported?: boolean;
  isDefault?: boolean;
  identity?: string;
}

/** Key lifecycle: create, look up within a scope, disable/enable, schedule and cancel deletion, destroy. */
export class KeyService {
  constructor(
    private readonly store: Store,
    readonly cache: KeyCache,
    private readonly feed: ChangeFeed,
    private readonly regions: RegionRegistry,
    private readonly clock: Clock,
    private readonly audit: AuditLog,
    private readonly log: Logger,
    readonly installation: string,
    /** Key-pair generation, per region, shared fairly between organisations (see FairWorkQueue). */
    readonly keygen: TokenWorkQueues = new TokenWorkQueues({ concurrency: KEYGEN_CONCURRENCY, maxPendingPerOrganisation: KEYGEN_MAX_PENDING_PER_ORGANISATION }),
  ) {}

  /**
   * Runs expensive token work (a key-pair generation) of `organisation` in `region` in its fair turn.
   * @throws KmsError TooManyRequests when the organisation is over its share (unless `bounded: false`).
   */
  pairWork<T>(organisation: string, region: string, work: () => Promise<T>, opts?: RunOptions): Promise<T> {
    return this.keygen.of(region).run(organisation, work, opts);
  }

  /** Scopes + slugs with a create in flight in this process (see create). */
  private readonly creating = new Set<string>();

  /** A fresh CKA_ID for a new version object of this key (see objectIdFor). */
  newObjectId(identity: string): string {
    return objectIdFor(identity, this.installation);
  }

  /** Brings the in-memory view up to date with writes by other processes (usually a no-op). */
  fresh(): Promise<void> | undefined {
    return this.feed.check();
  }

  /** A key by identity or slug inside the caller's scope; anything else is 404 (masked). */
  resolve(scope: Scope, identityOrSlug: string): KeyRecord {
    const byId = this.cache.get(identityOrSlug);
    const k =
      byId && byId.organisation === scope.organisation && byId.region === scope.region && byId.project === scope.project
        ? byId
        : this.cache.bySlug(scope.organisation, scope.region, scope.project, identityOrSlug);
    if (!k) throw notFound(`key ${identityOrSlug} not found`);
    return k;
  }

  list(scope: Scope, f: ListFilter): KeyRecord[] {
    const out: KeyRecord[] = [];
    for (const k of this.cache.all()) {
      if (k.organisation !== scope.organisation || k.region !== scope.region || k.project !== scope.project) continue;
      if (f.identity && k.identity !== f.identity) continue;
      if (f.name && k.name !== f.name) continue;
      if (f.slug && k.slug !== f.slug) continue;
      if (f.status && k.status !== f.status) continue;
      if (f.labels && !matchesLabels(k.labels, f.labels)) continue;
      out.push(k);
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.identity.localeCompare(b.identity));
  }

  summary(organisation: string, projectScoped = true) {
    const counts = new Map<string, Record<KeyStatus, number>>();
    for (const k of this.cache.all()) {
      if (k.organisation !== organisation || (!projectScoped && k.project)) continue;
      let c = counts.get(k.region);
      if (!c) counts.set(k.region, (c = { active: 0, disabled: 0, pending_deletion: 0 }));
      c[k.status]++;
    }
    return counts;
  }

  async create(scope: Scope, input: CreateKeyInput, opts: CreateKeyOptions = {}) {
    const token = this.regions.require(scope.region);
    const info = KEY_TYPES[input.keyType];
    if (info.family === 'chacha20' && !token.hasChaCha20)
      throw unsupported(`keyType chacha20-poly1305 needs mechanism CKM_CHACHA20_POLY1305, which the token of region ${scope.region} does not offer`);
    const slug = slugify(input.name);
    if (!slug) throw validation('name: must contain at least one ASCII letter or digit (a-z, A-Z, 0-9): the slug is made of those');
    if (slug === DEFAULT_KEY_SLUG && !opts.isDefault) throw new KmsError('Conflict', `slug ${slug} is reserved for the default organisation key`);
    if (this.cache.bySlug(scope.organisation, scope.region, scope.project, slug))
      throw new KmsError('Conflict', `a key with slug ${slug} already exists in this scope`);
    if (input.keyRotationEnabled && !input.rotationPeriodInDays)
      throw validation('rotationPeriodInDays: required when keyRotationEnabled is true');
    // Concurrent creates of one slug in this process: the first one does the (possibly queued,
    // expensive) token work, the others are 409 at once instead of generating objects that the
    // unique index would refuse anyway (across processes the index alone decides).
    const reservation = `${scope.organisation}\n${scope.region}\n${scope.project}\n${slug}`;
    if (this.creating.has(reservation)) throw new KmsError('Conflict', `a key with slug ${slug} already exists in this scope (being created)`);
    this.creating.add(reservation);
    try {
      return await this.createReserved(scope, input, opts, slug);
    } finally {
      this.creating.delete(reservation);
    }
  }

  private async createReserved(scope: Scope, input: CreateKeyInput, opts: CreateKeyOptions, slug: string) {
    const token = this.regions.require(scope.region);
    const info = KEY_TYPES[input.keyType];
    const identity = opts.identity ?? newIdentity();
    const ckaId = this.newObjectId(identity);
    const extractable = Boolean(input.exportAllowed);
    const generate = () => token.generate(info.token, { ckaId: Buffer.from(ckaId), label: `${slug}/v1`, extractable });
    if (opts.source) await opts.source(Buffer.from(ckaId));
    else if (isAsymmetric(input.keyType)) await this.pairWork(scope.organisation, scope.region, generate);
    else await generate();

    const now = this.clock.nowIso();
    const rotationEnabled = Boolean(input.keyRotationEnabled);
    const record: KeyRecord = {
      identity,
      organisation: scope.organisation,
      region: scope.region,
      project: scope.project,
      name: input.name,
      slug,
      description: input.description ?? '',
      labels: input.labels ?? {},
      annotations: input.annotations ?? {},
      keyType: input.keyType,
      status: 'active',
      statusBeforeDeletion: null,
      exportAllowed: extractable,
      imported: Boolean(opts.imported),
      allowRotation: opts.imported ? Boolean(input.allowRotation) : true,
      isDefault: Boolean(opts.isDefault),
      rotationEnabled,
      rotationPeriodDays: input.rotationPeriodInDays ?? null,
      lastRotationAt: now,
      nextRotationAt: rotationEnabled && input.rotationPeriodInDays ? addDays(now, input.rotationPeriodInDays) : null,
      manualRotations: 0,
      latestVersion: 1,
      minDecryptionVersion: 1,
      deletionAt: null,
      objectVersion: 1,
      createdAt: now,
      updatedAt: now,
      versions: [{ version: 1, ckaId, status: 'enabled', origin: opts.imported ? 'imported' : 'generated', createdAt: now }],
    };
    try {
      await this.store.transaction((tx) => tx.keys.insert(record));
    } catch (e) {
      // generate-then-record: a lost race or failed insert must not leave an orphan object.
      await token.destroy(Buffer.from(ckaId)).catch((d) => this.log.error('could not destroy unrecorded object', { ckaId, error: String(d) }));
      if (e instanceof UniqueViolation) throw new KmsError('Conflict', `a key with slug ${slug} already exists in this scope`);
      throw e;
    }
    await this.feed.publish();
    return this.cache.get(identity) ?? record;
  }

  /** Creates the default organisation key in each available region where it is missing. */
  async ensureDefaultKeys(organisations: string[], region: string): Promise<void> {
    for (const org of organisations) {
      if (this.cache.bySlug(org, region, '', DEFAULT_KEY_SLUG)) continue;
      try {
        await this.create(
          { organisation: org, region, project: '' },
          {
            name: DEFAULT_KEY_SLUG,
            keyType: 'aes256-gcm96',
            description: 'Default organisation key (platform-managed rotation)',
            keyRotationEnabled: true,
            rotationPeriodInDays: DEFAULT_KEY_ROTATION_DAYS,
          },
          { isDefault: true },
        );
        this.log.info('created default organisation key', { organisation: org, region });
      } catch (e) {
        // Another process on the same data dir created it first: fine.
        if (!(e instanceof KmsError && e.code === 'Conflict')) throw e;
      }
    }
  }

  /** Applies a guarded patch with compare-and-set on objectVersion, retrying on a lost race. */
  async mutate(
    key: KeyRecord,
    decide: (current: KeyRecord) => KeyPatch,
  ): Promise<KeyRecord> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const current = (await this.store.keys.load(key.identity)) ?? undefined;
      if (!current) throw notFound(`key ${key.identity} not found`);
      const patch = { ...decide(current), updatedAt: this.clock.nowIso() };
      const ok = await this.store.transaction((tx) => tx.keys.update(key.identity, current.objectVersion, patch));
      if (ok) {
        await this.feed.publish();
        return this.cache.get(key.identity)!;
      }
    }
    throw new KmsError('Conflict', `key ${key.identity} is being changed concurrently, retry`);
  }

  disable(key: KeyRecord) {
    return this.mutate(key, (k) => {
      if (k.isDefault) throw keyState('the default organisation key cannot be disabled');
      if (k.status === 'pending_deletion') throw keyState('key is pending deletion; cancel the deletion first');
      return { status: 'disabled' };
    });
  }

  enable(key: KeyRecord) {
    return this.mutate(key, (k) => {
      if (k.status === 'pending_deletion') throw keyState('key is pending deletion; cancel the deletion first');
      return { status: 'active' };
    });
  }

  scheduleDeletion(key: KeyRecord, pendingWindowInDays: number) {
    return this.mutate(key, (k) => {
      if (k.isDefault) throw keyState('the default organisation key cannot be deleted');
      if (k.status === 'pending_deletion') throw keyState('key is already pending deletion');
      return {
        status: 'pending_deletion',
        statusBeforeDeletion: k.status,
        deletionAt: addDays(this.clock.nowIso(), pendingWindowInDays),
      };
    });
  }

  cancelDeletion(key: KeyRecord) {
    return this.mutate(key, (k) => {
      if (k.status !== 'pending_deletion') throw keyState('key is not pending deletion');
      return { status: 'active', statusBeforeDeletion: null, deletionAt: null };
    });
  }

  setMinDecryptionVersion(key: KeyRecord, min: number) {
    return this.mutate(key, (k) => {
      if (min < 1 || min > k.latestVersion)
        throw validation(`minDecryptionVersion: must be between 1 and latestVersion (${k.latestVersion})`);
      return { minDecryptionVersion: min };
    });
  }

  /**
   * Destroys keys whose deletion window has ended: rows first (so SQLite never names a missing
   * object), then the token objects. Idempotent and safe on several daemons at once.
   */
  async destroyDue(): Promise<number> {
    let n = 0;
    for (const identity of await this.store.keys.dueForDestruction(this.clock.nowIso())) {
      const key = await this.store.transaction(async (tx) => {
        const k = await tx.keys.load(identity);
        if (!k || k.status !== 'pending_deletion' || !k.deletionAt || k.deletionAt > this.clock.nowIso()) return undefined;
        await tx.keys.delete(identity);
        return k;
      });
      if (!key) continue;
      await this.feed.publish();
      const token = this.regions.tokens.get(key.region);
      for (const v of key.versions) {
        try {
          if (token?.available) await token.destroy(Buffer.from(v.ckaId));
        } catch (e) {
          // Left to reconciliation: an object no row names is an orphan and is destroyed there.
          this.log.warn('destroy of token object deferred to reconciliation', { ckaId: v.ckaId, error: String(e) });
        }
      }
      await this.audit.record({
        action: 'kms.destroy',
        outcome: 'success',
        region: key.region,
        keyIdentity: key.identity,
        organisation: key.organisation,
        principal: 'kmsd',
        detail: { versions: key.versions.length },
      });
      n++;
    }
    return n;
  }
}
