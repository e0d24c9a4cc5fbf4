import { createPublicKey, type KeyObject } from 'node:crypto';
import type { Logger } from 'winston';
import type { Clock } from '../clock.js';
import { forbidden, keyState, regionUnavailable, unsupported, validation } from '../errors.js';
import type { CreateKeyInput, KeyService, Scope } from '../keys/key-service.js';
import { isAsymmetric, KEY_TYPES, type KeyType } from '../keys/key-types.js';
import { slugify, type KeyRecord } from '../keys/model.js';
import { versionForNew } from '../keys/version-policy.js';
import type { RotationService } from '../rotation/rotation-service.js';
import type { CreatorAlive } from '../cluster/liveness.js';
import type { Store } from '../store/store.js';
import type { HashName } from '../token/constants.js';
import type { RegionToken } from '../token/region-token.js';
import type { RegionRegistry } from '../token/regions.js';
import type { ObjectOptions } from '../token/templates.js';
import { rereadOf, throughReread } from '../token/reread.js';
import { IMPORT_WRAPPING_BITS, parseWrappingAlgorithm, requireOaepHash, type WrappingAlgorithm } from './formats.js';
import { DEFAULT_MAX_OPEN_IMPORT_TOKENS, ImportTokens, type ImportParameters, type ImportTokenRow } from './import-tokens.js';
import { directUnwrapper, ED25519_IMPORT_REFUSED, exportPlaintext, materialize, withTwoPartUnwrapper, wrapForCaller } from './token-material.js';
import { WrappingKeys } from './wrapping-keys.js';

export type ImportWithWrappingKeyInput = CreateKeyInput & { importKeyMaterial: string; hashFunction?: HashName };
export type ImportWithTokenInput = CreateKeyInput & { importToken: string; wrappedKeyMaterial: string };

export interface ExportRequest {
  keyVersion?: number;
  wrappingPublicKeyPem?: string;
  hashFunction?: HashName;
}

export interface ExportResult {
  keyMaterial: string;
  keyVersion: string;
  wrappingAlgorithm: string;
}


export interface ByokDeps {
  store: Store;
  /** Whether the process that made a token object still runs (see cluster/liveness.ts). */
  creatorAlive?: CreatorAlive;
  regions: RegionRegistry;
  keys: KeyService;
  rotation: RotationService;
  clock: Clock;
  log: Logger;
  /** export.allowPlaintext of the operator config. */
  allowPlaintextExport: boolean;
  /** limits.maxOpenImportTokens of the operator config: unexpired, unused import tokens per organisation. */
  maxOpenImportTokens?: number;
}

/**
 * BYOK import (regional wrapping key and single-use import tokens) and break-glass export.
 * Material comes in only through C_UnwrapKey straight into token objects and goes out only
 * through C_WrapKey; wrapping private keys never leave the token.
 */
export class ByokService {
  readonly wrappingKeys: WrappingKeys;
  readonly importTokens: ImportTokens;

  constructor(private readonly d: ByokDeps) {
    this.wrappingKeys = new WrappingKeys(d.store.wrappingKeys, d.regions, d.clock, d.log, d.keys, d.creatorAlive);
    this.importTokens = new ImportTokens(d.store, d.regions, d.clock, d.log, d.keys, d.maxOpenImportTokens ?? DEFAULT_MAX_OPEN_IMPORT_TOKENS);
  }

  private hashes(region: string): Promise<HashName[]> {
    return this.d.regions.oaepHashes(region);
  }

  async wrappingKey(region: string) {
    const k = await this.wrappingKeys.get(region);
    return { publicKey: k.publicKeyPem, algorithm: 'RSA_AES_KEY_WRAP', hashFunctions: await this.hashes(region) };
  }

  /** POST /keys with importKeyMaterial: the two-part blob under the regional wrapping key. */
  async createFromWrappingKey(scope: Scope, input: ImportWithWrappingKeyInput): Promise<KeyRecord> {
    checkImportable(input.keyType);
    checkRotationFields(input);
    const hash = requireOaepHash(await this.hashes(scope.region), input.hashFunction, scope.region, 'hashFunction');
    const token = this.d.regions.require(scope.region);
    const wk = await this.wrappingKeys.get(scope.region);
    const blob = Buffer.from(input.importKeyMaterial, 'base64');
    return this.d.keys.create(scope, input, {
      imported: true,
      source: (ckaId) =>
        withTwoPartUnwrapper(token, wk.ckaId, wk.modulusBytes, hash, blob, 'importKeyMaterial', (u) =>
          materialize(token, input.keyType, target(ckaId, `${slugify(input.name)}/v1`, input.exportAllowed), u, 'importKeyMaterial'),
        ),
    });
  }

  async importParameters(scope: Scope, keyType: KeyType, wrappingAlgorithm: WrappingAlgorithm): Promise<ImportParameters> {
    checkImportable(keyType);
    const token = this.d.regions.require(scope.region);
    if (KEY_TYPES[keyType].family === 'chacha20' && !token.hasChaCha20)
      throw unsupported(`keyType chacha20-poly1305 needs mechanism CKM_CHACHA20_POLY1305, which the token of region ${scope.region} does not offer`);
    const scheme = parseWrappingAlgorithm(wrappingAlgorithm);
    if (!scheme.twoPart && isAsymmetric(keyType))
      throw validation(
        `wrappingAlgorithm: ${wrappingAlgorithm} wraps the material itself, which fits symmetric keys only; use RSA_AES_KEY_WRAP_${scheme.hash} for ${keyType}`,
      );
    const supported = await this.hashes(scope.region);
    if (!supported.includes(scheme.hash))
      throw unsupported(
        `wrappingAlgorithm: ${wrappingAlgorithm} needs RSA-OAEP with ${scheme.hash}; the token of region ${scope.region} does RSA-OAEP with ` +
          `${supported.join(', ') || 'no hash'} only (${supported.flatMap((h) => [`RSA_OAEP_${h}`, `RSA_AES_KEY_WRAP_${h}`]).join(', ')})`,
      );
    return this.importTokens.issue(scope, keyType, wrappingAlgorithm);
  }

  /** POST /keys/import. The token is checked first and used up only once the key's fields passed. */
  async importKey(scope: Scope, input: ImportWithTokenInput, opts: { identity?: string } = {}): Promise<KeyRecord> {
    checkImportable(input.keyType);
    checkRotationFields(input);
    const row = await this.importTokens.check(scope, input.importToken, input.keyType);
    const token = this.d.regions.require(scope.region);
    return this.d.keys.create(scope, input, {
      imported: true,
      identity: opts.identity,
      source: (ckaId) => this.unwrapWithImportToken(token, row, input.keyType, target(ckaId, `${slugify(input.name)}/v1`, input.exportAllowed), input.wrappedKeyMaterial),
    });
  }

  /** POST /keys/{id}/import-version: only imported keys with allowRotation, like rotation. */
  async importVersion(scope: Scope, key: KeyRecord, input: { importToken: string; wrappedKeyMaterial: string }): Promise<KeyRecord> {
    if (!key.imported) throw keyState('import-version is for imported keys; this key was generated in the token (rotate it instead)');
    if (!key.allowRotation) throw keyState('key was imported without allowRotation: no new versions can be imported');
    if (key.status !== 'active') throw keyState(`key is ${key.status}; import-version needs an active key`);
    const row = await this.importTokens.check(scope, input.importToken, key.keyType);
    const token = this.d.regions.require(key.region);
    return this.d.rotation.addImportedVersion(key, (ckaId, label) =>
      this.unwrapWithImportToken(token, row, key.keyType, target(ckaId, label, key.exportAllowed), input.wrappedKeyMaterial),
    );
  }

  private async unwrapWithImportToken(token: RegionToken, row: ImportTokenRow, keyType: KeyType, to: ObjectOptions, wrappedB64: string): Promise<void> {
    // Checked before the token is used up: SoftHSM2 may hide a pair another daemon made from
    // this process for a while (see WrappingKeys.generate); that is no reason to burn the token.
    if (!token.exists(Buffer.from(row.ckaId), 'private'))
      throw regionUnavailable(token.settings.region, 'the import key of this token is not visible to this process yet; retry');
    // Used up as soon as its unwrap starts, whatever happens next: no decryption oracle.
    await this.importTokens.consume(row);
    try {
      // A re-read of the token's object index meanwhile (the region drained for it, the index
      // being rebuilt) is waited for here and the unwrap done again. Not by re-running the
      // request (throughReread around the handler): that run would find its token used up.
      let attempt = 0;
      await throughReread(async () => {
        // what an interrupted attempt may have left under the target CKA_ID
        if (attempt++ > 0) await token.destroy(to.ckaId);
        await this.unwrapInto(token, row, keyType, to, wrappedB64);
      }).catch((e: unknown) => {
        if (!rereadOf(e)) throw e;
        throw regionUnavailable(
          token.settings.region,
          'the token re-read its object index for too long during the import; the import token is used up: request new import parameters',
        );
      });
    } finally {
      await this.importTokens.retire(row).catch((e) => this.d.log.warn('import key not destroyed yet; the sweep retries', { ckaId: row.ckaId, error: String(e) }));
    }
  }

  /** The caller's material, unwrapped by the import key of `row`, into the token object `to`. */
  private async unwrapInto(token: RegionToken, row: ImportTokenRow, keyType: KeyType, to: ObjectOptions, wrappedB64: string): Promise<void> {
    const scheme = parseWrappingAlgorithm(row.wrappingAlgorithm);
    const rsaCkaId = Buffer.from(row.ckaId);
    const modulusBytes = IMPORT_WRAPPING_BITS / 8;
    const wrapped = Buffer.from(wrappedB64, 'base64');
    const field = 'wrappedKeyMaterial';
    if (scheme.twoPart)
      await withTwoPartUnwrapper(token, rsaCkaId, modulusBytes, scheme.hash, wrapped, field, (u) => materialize(token, keyType, to, u, field));
    else await materialize(token, keyType, to, directUnwrapper(token, rsaCkaId, modulusBytes, scheme.hash, wrapped, field), field);
  }

  /** Break-glass export of one version (the route has checked the admin-only permission). */
  async export(key: KeyRecord, req: ExportRequest): Promise<ExportResult> {
    if (!key.exportAllowed) throw forbidden(`key ${key.identity} was not created with exportAllowed: true and cannot be exported`);
    if (key.status !== 'active') throw keyState(`key is ${key.status}; export needs an active key`);
    const v = versionForNew(key, req.keyVersion);
    const token = this.d.regions.require(key.region);
    const object = token.handle(Buffer.from(v.ckaId), isAsymmetric(key.keyType) ? 'private' : 'secret');

    if (req.wrappingPublicKeyPem !== undefined) {
      const callerKey = parseCallerKey(req.wrappingPublicKeyPem);
      const hash = requireOaepHash(await this.hashes(key.region), req.hashFunction, key.region, 'hashFunction');
      const blob = await wrapForCaller(token, object, callerKey, hash);
      return { keyMaterial: blob.toString('base64'), keyVersion: String(v.version), wrappingAlgorithm: `RSA_AES_KEY_WRAP_${hash}` };
    }
    if (req.hashFunction !== undefined) throw validation('hashFunction: only together with wrappingPublicKeyPem');
    if (!this.d.allowPlaintextExport)
      throw validation('wrappingPublicKeyPem: required; plaintext export is disabled on this server (export.allowPlaintext: false)');
    const material = await exportPlaintext(token, object);
    try {
      return { keyMaterial: material.toString('base64'), keyVersion: String(v.version), wrappingAlgorithm: 'NONE' };
    } finally {
      material.fill(0);
    }
  }

  /** Scheduler hook: destroys the import pairs of expired and leftover import tokens. */
  sweep(): Promise<number> {
    return this.importTokens.sweep();
  }
}

function target(ckaId: Buffer, label: string, exportAllowed: boolean | undefined): ObjectOptions {
  // exportAllowed keys are CKA_EXTRACTABLE (still CKA_SENSITIVE), exactly like generated ones.
  return { ckaId, label, extractable: Boolean(exportAllowed) };
}

function checkImportable(keyType: KeyType): void {
  if (KEY_TYPES[keyType].family === 'ed25519') throw unsupported(ED25519_IMPORT_REFUSED);
}

function checkRotationFields(input: CreateKeyInput): void {
  if (input.keyRotationEnabled && !input.allowRotation)
    throw validation('keyRotationEnabled: an imported key rotates only when imported with allowRotation: true');
}

function parseCallerKey(pem: string): KeyObject {
  if (/PRIVATE KEY/.test(pem)) throw validation('wrappingPublicKeyPem: must be a public key (never send a private key)');
  let k: KeyObject;
  try {
    k = createPublicKey(pem);
  } catch {
    throw validation('wrappingPublicKeyPem: not a PEM public key (SPKI "BEGIN PUBLIC KEY" or PKCS#1 "BEGIN RSA PUBLIC KEY")');
  }
  if (k.asymmetricKeyType !== 'rsa') throw validation(`wrappingPublicKeyPem: must be an RSA key, not ${k.asymmetricKeyType}`);
  const bits = k.asymmetricKeyDetails?.modulusLength ?? 0;
  if (bits < 2048) throw validation(`wrappingPublicKeyPem: the RSA key must have at least 2048 bits, this one has ${bits}`);
  return k;
}
