import { createHash } from 'node:crypto';
import type { Logger } from 'winston';
import type { Clock } from '../clock.js';
import { tooManyRequests, validation } from '../errors.js';
import type { KeyService, Scope } from '../keys/key-service.js';
import type { KeyType } from '../keys/key-types.js';
import type { ImportTokenRecord, ImportTokensRepository, Store } from '../store/store.js';
import { rsaPublicKeyObject, spkiPem } from '../token/public-key.js';
import type { RegionRegistry } from '../token/regions.js';
import { unwrapKeyPairTemplate } from '../token/templates.js';
import { IMPORT_KEY_PREFIX, IMPORT_TOKEN_TTL_MS, IMPORT_WRAPPING_BITS, newByokObjectId, newImportToken, type WrappingAlgorithm } from './formats.js';

export type ImportTokenRow = ImportTokenRecord & { keyType: KeyType; wrappingAlgorithm: WrappingAlgorithm };

export interface ImportParameters {
  importToken: string;
  wrappingPublicKeyPem: string;
  wrappingAlgorithm: WrappingAlgorithm;
  expiresAt: string;
}

/** A pair no row names is left alone this long (real time): its creator may be about to record it. */
const UNRECORDED_GRACE_MS = 10 * 60_000;
/** limits.maxOpenImportTokens when not configured (the contract's default). */
export const DEFAULT_MAX_OPEN_IMPORT_TOKENS = 50;
const sha256Hex = (s: string) => createHash('sha256').update(s).digest('hex');

/**
 * Single-use import tokens (AWS style). Each one names a fresh RSA-3072 pair generated in the
 * region's token (private half non-extractable, CKA_UNWRAP only); the store keeps only the
 * token's SHA-256. A token is used up by the first import that reaches the unwrap — also when
 * the unwrap then fails, so an import key never serves as a decryption oracle — and its pair
 * is destroyed once used or expired (24 h on the daemon clock).
 */
export class ImportTokens {
  constructor(
    private readonly store: Pick<Store, 'importTokens' | 'transaction'>,
    private readonly regions: RegionRegistry,
    private readonly clock: Clock,
    private readonly log: Logger,
    /** Whose pairWork queues the RSA-3072 generations: the organisation's fair share of the token. */
    private readonly keys: Pick<KeyService, 'pairWork'>,
    /** limits.maxOpenImportTokens: unexpired, unused tokens one organisation may hold. */
    private readonly maxOpen: number = DEFAULT_MAX_OPEN_IMPORT_TOKENS,
  ) {}

  /** 429 when the organisation holds maxOpen open tokens; Retry-After = until the first one expires (daemon clock). */
  private async checkOpenTokens(organisation: string, repo: ImportTokensRepository = this.store.importTokens): Promise<void> {
    const { open, firstExpiry } = await repo.openCount(organisation, this.clock.nowIso());
    if (open < this.maxOpen) return;
    const seconds = firstExpiry ? (Date.parse(firstExpiry) - this.clock.nowMs()) / 1000 : 1;
    throw tooManyRequests(
      `organisation ${organisation} holds ${open} unexpired, unused import tokens (limits.maxOpenImportTokens: ${this.maxOpen}); ` +
        'use or let some expire before requesting new import parameters',
      seconds,
    );
  }

  /**
   * New import parameters: an RSA-3072 pair in the region's token, generated in the organisation's
   * fair turn (see FairWorkQueue), and a single-use token naming it.
   * @throws KmsError TooManyRequests when the organisation is over its share of key-pair
   *   generation or holds limits.maxOpenImportTokens open tokens.
   */
  async issue(scope: Scope, keyType: KeyType, wrappingAlgorithm: WrappingAlgorithm): Promise<ImportParameters> {
    const token = this.regions.require(scope.region);
    // Checked before the (expensive) generation, and again atomically with the insert below.
    await this.checkOpenTokens(scope.organisation);
    const ckaId = newByokObjectId(IMPORT_KEY_PREFIX);
    const t = unwrapKeyPairTemplate(IMPORT_WRAPPING_BITS, { ckaId: Buffer.from(ckaId), label: 'kmsd-import-key', extractable: false });
    const pair = await this.keys.pairWork(scope.organisation, scope.region, () => token.generateKeyPairRaw(t.mechanism, t.publicTemplate, t.privateTemplate));
    let pem: string;
    try {
      pem = spkiPem(rsaPublicKeyObject(token.readPublicKeyByHandle(pair.publicKey)));
    } finally {
      // The caller gets the public key as PEM; only the private half has a use on the token.
      token.destroyHandle(pair.publicKey);
    }
    token.cacheHandle(Buffer.from(ckaId), 'private', pair.privateKey);

    const importToken = newImportToken();
    const createdAt = this.clock.nowIso();
    const expiresAt = this.clock.isoAfterMs(IMPORT_TOKEN_TTL_MS);
    try {
      await this.store.transaction(async (tx) => {
        await this.checkOpenTokens(scope.organisation, tx.importTokens);
        await tx.importTokens.insert({
          tokenSha256: sha256Hex(importToken),
          region: scope.region,
          organisation: scope.organisation,
          project: scope.project,
          keyType,
          wrappingAlgorithm,
          ckaId,
          expiresAt,
          usedAt: null,
          createdAt,
        });
      });
    } catch (e) {
      await token.destroy(Buffer.from(ckaId)).catch(() => undefined); // else the sweep finds it (no row names it)
      throw e;
    }
    return { importToken, wrappingPublicKeyPem: pem, wrappingAlgorithm, expiresAt };
  }

  /**
   * The presented token's row, checked without using it up: unknown (or of another
   * organisation, region or project), expired, already used, or issued for another key type
   * are each a 400 that says which.
   */
  async check(scope: Scope, presented: string, keyType: KeyType): Promise<ImportTokenRow> {
    const row = (await this.store.importTokens.byDigest(sha256Hex(presented))) as ImportTokenRow | undefined;
    if (!row || row.organisation !== scope.organisation || row.region !== scope.region || row.project !== scope.project)
      throw validation('importToken: unknown import token (a token is valid only in the organisation, region and project that requested it)');
    if (row.expiresAt <= this.clock.nowIso()) {
      await this.retire(row);
      throw validation(`importToken: expired at ${row.expiresAt}; request new import parameters`);
    }
    if (row.usedAt) throw validation('importToken: already used; import tokens are single-use, request new import parameters');
    if (row.keyType !== keyType) throw validation(`importToken: issued for keyType ${row.keyType}, not ${keyType}`);
    return row;
  }

  /** Uses the token up (compare-and-set: of two concurrent imports with one token, one gets it). */
  async consume(row: ImportTokenRow): Promise<void> {
    if (!(await this.store.importTokens.consume(row.tokenSha256, this.clock.nowIso()))) throw validation('importToken: already used; import tokens are single-use, request new import parameters');
  }

  /** Destroys the token's import pair and marks the token used (idempotent). */
  async retire(row: Pick<ImportTokenRecord, 'tokenSha256' | 'region' | 'ckaId'>): Promise<void> {
    const token = this.regions.tokens.get(row.region);
    // A token that is down keeps the pair until the next sweep; the row stays unused for that.
    if (!token?.available) return;
    await token.destroy(Buffer.from(row.ckaId));
    await this.store.importTokens.markUsed(row.tokenSha256, this.clock.nowIso());
  }

  /**
   * Destroys the pairs of expired tokens, and import pairs on the token whose token is used
   * or which no row names (generated, then never recorded). Run by the scheduler.
   */
  async sweep(): Promise<number> {
    let n = 0;
    const expired = await this.store.importTokens.expiredUnused(this.clock.nowIso());
    for (const row of expired) {
      try {
        await this.retire(row);
        n++;
      } catch (e) {
        this.log.warn('could not destroy an expired import key', { region: row.region, ckaId: row.ckaId, error: String(e) });
      }
    }
    for (const [region, token] of this.regions.tokens) {
      if (!token.available) continue;
      for (const id of token.listObjectIds(Buffer.from(IMPORT_KEY_PREFIX))) {
        const ckaId = id.toString();
        const row = await this.store.importTokens.byCkaId(ckaId);
        if (row && !row.usedAt) continue;
        const createdMs = Number(/\/(\d+)\.\d+\.[0-9a-f]+$/.exec(ckaId)?.[1] ?? 0);
        if (!row && Date.now() - createdMs < UNRECORDED_GRACE_MS) continue;
        await token.destroy(id).catch((e) => this.log.warn('could not destroy a leftover import key', { region, ckaId, error: String(e) }));
        n++;
      }
    }
    return n;
  }
}
