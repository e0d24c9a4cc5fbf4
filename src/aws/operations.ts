import { constants as cryptoConstants, createPublicKey, publicEncrypt } from 'node:crypto';
import type { Services } from '../api/services.js';
import { can, type Permission, type Principal } from '../auth/principals.js';
import { formatVersioned, parseVersioned } from '../crypto/versioned.js';
import { KmsError } from '../errors.js';
import { newIdentity, type Scope } from '../keys/key-service.js';
import { isAsymmetric } from '../keys/key-types.js';
import type { KeyRecord } from '../keys/model.js';
import type { AwsKeyRow, AwsRepository, AwsTag } from '../store/aws-repo.js';
import type { WrappingAlgorithm } from '../byok/formats.js';
import { canonicalContext, decodeBlob, encodeBlob } from './ciphertext.js';
import { AwsError, awsValidation } from './errors.js';
import { KEY_SPECS, MAC_ALGORITHMS, SIGNING_ALGORITHMS, SPEC_OF_KEY_TYPE, type AwsKeySpec, type KeyUsage } from './key-specs.js';
import type { AwsOperation, AwsRequest } from './schemas.js';

/** Who is calling: the verified credential's principal and the scope its keys live in. */
export interface Caller {
  accessKeyId: string;
  principal: Principal;
  scope: Scope;
  requestId: string;
}

/** What an operation learnt that its audit record should carry. */
export interface AuditNote {
  keyIdentity?: string;
  keyVersion?: string;
  detail?: Record<string, unknown>;
}

/** The listener's fixed settings. */
export interface AwsSettings {
  sigv4Region: string;
  accountId: string;
}

/** The permission (API.md roles) each operation needs. */
export const PERMISSION: Record<AwsOperation, Permission> = {
  CreateKey: 'create',
  DescribeKey: 'read',
  ListKeys: 'read',
  CreateAlias: 'update',
  UpdateAlias: 'update',
  DeleteAlias: 'update',
  ListAliases: 'read',
  Encrypt: 'crypto',
  Decrypt: 'crypto',
  ReEncrypt: 'crypto',
  GenerateDataKey: 'crypto',
  GenerateDataKeyWithoutPlaintext: 'crypto',
  GenerateRandom: 'crypto',
  Sign: 'crypto',
  Verify: 'crypto',
  GetPublicKey: 'read',
  GenerateMac: 'crypto',
  VerifyMac: 'crypto',
  EnableKey: 'update',
  DisableKey: 'update',
  ScheduleKeyDeletion: 'delete',
  CancelKeyDeletion: 'delete',
  EnableKeyRotation: 'update',
  DisableKeyRotation: 'update',
  GetKeyRotationStatus: 'read',
  RotateKeyOnDemand: 'update',
  ListKeyRotations: 'read',
  TagResource: 'update',
  UntagResource: 'update',
  ListResourceTags: 'read',
  GetParametersForImport: 'import',
  ImportKeyMaterial: 'import',
};

const ALIAS_NAME = /^alias\/[a-zA-Z0-9/_-]{1,250}$/;
const MAX_TAGS = 50;
const DEFAULT_ROTATION_DAYS = 365;
const DEFAULT_DELETION_WINDOW_DAYS = 30;
const MARKER = /^kmsd:([0-9]{1,9})$/;
/** AWS wrapping algorithm → kmsd's import-token algorithm (API.md "BYOK"). */
const WRAPPING: Record<string, WrappingAlgorithm> = {
  RSAES_OAEP_SHA_1: 'RSA_OAEP_SHA1',
  RSAES_OAEP_SHA_256: 'RSA_OAEP_SHA256',
  RSA_AES_KEY_WRAP_SHA_1: 'RSA_AES_KEY_WRAP_SHA1',
  RSA_AES_KEY_WRAP_SHA_256: 'RSA_AES_KEY_WRAP_SHA256',
};
/** AWS RSAES algorithm → the OAEP hash name the token probe reports. */
const OAEP_HASH: Record<string, { token: 'SHA1' | 'SHA256'; node: string }> = {
  RSAES_OAEP_SHA_1: { token: 'SHA1', node: 'sha1' },
  RSAES_OAEP_SHA_256: { token: 'SHA256', node: 'sha256' },
};

const b64 = (b: Buffer) => b.toString('base64');
/** awsJson1_1 timestamps are epoch seconds. */
const epoch = (iso: string) => Date.parse(iso) / 1000;
const notFound = (what: string) => new AwsError('NotFoundException', `${what} is not found.`);

/** A KeyId resolved: a kmsd key, or an EXTERNAL key that has no material (and so no kmsd key) yet. */
type Resolved = { identity: string; key: KeyRecord; row: AwsKeyRow | null } | { identity: string; key?: undefined; row: AwsKeyRow };

/** The AWS view of a key: spec, usage and origin. */
interface AwsView {
  keySpec: string;
  spec: AwsKeySpec;
  keyUsage: KeyUsage;
  origin: 'AWS_KMS' | 'EXTERNAL';
}

/**
 * Every operation of the AWS KMS-compatible API over kmsd's services: keys are KeyService keys
 * in the caller's scope, every cryptographic operation is the CryptoService call the native API
 * makes (no cryptographic rule of its own), import goes through ByokService's import tokens.
 * AWS-only metadata (usage, origin, aliases, tags) lives in the store (AwsRepository).
 */
export class AwsOperations {
  /** AWS attributes by identity; null = a native key (none stored). Only final rows are cached: they never change. */
  private readonly attributes = new Map<string, AwsKeyRow | null>();

  constructor(
    private readonly s: Services,
    private readonly repo: AwsRepository,
    private readonly settings: AwsSettings,
  ) {}

  // ---- identities --------------------------------------------------------------------------

  keyArn(identity: string): string {
    return `arn:aws:kms:${this.settings.sigv4Region}:${this.settings.accountId}:key/${identity}`;
  }

  private aliasArn(name: string): string {
    return `arn:aws:kms:${this.settings.sigv4Region}:${this.settings.accountId}:${name}`;
  }

  /** A KeyId as sent (identity, key ARN, alias name, alias ARN) → an identity or an alias name. */
  private parseKeyId(keyId: string): { identity?: string; alias?: string } {
    if (keyId.startsWith('arn:')) {
      const m = /^arn:aws[a-z-]*:kms:([^:]*):([^:]*):(key\/.+|alias\/.+)$/.exec(keyId);
      if (!m) throw new AwsError('InvalidArnException', `${keyId.slice(0, 200)} is not a valid KMS key or alias ARN`);
      // Another region or account holds none of this listener's keys.
      if (m[1] !== this.settings.sigv4Region || m[2] !== this.settings.accountId) throw notFound(`Key '${keyId.slice(0, 200)}'`);
      const resource = m[3]!;
      return resource.startsWith('key/') ? { identity: resource.slice(4) } : { alias: resource };
    }
    if (keyId.startsWith('alias/')) return { alias: keyId };
    return { identity: keyId };
  }

  private async resolve(caller: Caller, keyId: string, note?: AuditNote): Promise<Resolved> {
    const parsed = this.parseKeyId(keyId);
    let identity = parsed.identity;
    if (parsed.alias) {
      const a = await this.repo.alias(caller.scope, parsed.alias);
      if (!a) throw notFound(`Alias '${this.aliasArn(parsed.alias).slice(0, 300)}'`);
      identity = a.keyIdentity;
    }
    const r = await this.resolveIdentity(caller.scope, identity!);
    if (!r) throw notFound(`Key '${this.keyArn(identity!).slice(0, 300)}'`);
    if (note) note.keyIdentity = r.identity;
    return r;
  }

  private async resolveIdentity(scope: Scope, identity: string): Promise<Resolved | undefined> {
    let key: KeyRecord | undefined;
    try {
      key = this.s.keys.resolve(scope, identity);
    } catch (e) {
      if (!(e instanceof KmsError && e.code === 'NotFound')) throw e;
    }
    if (key) return { identity: key.identity, key, row: await this.attributesOf(key) };
    const row = await this.repo.key(identity);
    if (!row || row.state === 'Created' || !sameScope(row, scope)) return undefined;
    if (row.state === 'PendingDeletion' && row.deletionAt && row.deletionAt <= this.s.clock.nowIso()) {
      // An EXTERNAL key that never got material: its window ended, nothing is in the token.
      await this.repo.deleteKey(row.identity);
      return undefined;
    }
    return { identity: row.identity, row };
  }

  private async attributesOf(key: KeyRecord): Promise<AwsKeyRow | null> {
    const cached = this.attributes.get(key.identity);
    if (cached !== undefined) return cached;
    let row = (await this.repo.key(key.identity)) ?? null;
    if (row && row.state !== 'Created') {
      // The key exists, so its material was imported: an import that stopped between creating
      // the key and recording that (a crash) is completed here.
      await this.repo.setKeyState(key.identity, row.state, 'Created', null);
      row = { ...row, state: 'Created', deletionAt: null };
    }
    // A row is written before its key exists, so a key without one is native for good.
    this.attributes.set(key.identity, row);
    return row;
  }

  private view(r: Resolved): AwsView {
    if (r.row) return { keySpec: r.row.keySpec, spec: KEY_SPECS[r.row.keySpec]!, keyUsage: r.row.keyUsage as KeyUsage, origin: r.row.origin };
    const native = SPEC_OF_KEY_TYPE[r.key!.keyType] ?? { keySpec: 'SYMMETRIC_DEFAULT', keyUsage: 'ENCRYPT_DECRYPT' as const };
    return { keySpec: native.keySpec, spec: KEY_SPECS[native.keySpec]!, keyUsage: native.keyUsage, origin: r.key!.imported ? 'EXTERNAL' : 'AWS_KMS' };
  }

  /** A key that exists with material and is Enabled; else the AWS state error. */
  private usable(r: Resolved, usage: KeyUsage | null, op: string): { key: KeyRecord; view: AwsView } {
    const view = this.view(r);
    if (!r.key) throw new AwsError('KMSInvalidStateException', `${this.keyArn(r.identity)} is pending import.`);
    if (usage && view.keyUsage !== usage)
      throw new AwsError('InvalidKeyUsageException', `${this.keyArn(r.identity)} key usage is ${view.keyUsage} which is not valid for ${op}.`);
    if (r.key.status === 'disabled') throw new AwsError('DisabledException', `${this.keyArn(r.identity)} is disabled.`);
    if (r.key.status === 'pending_deletion') throw new AwsError('KMSInvalidStateException', `${this.keyArn(r.identity)} is pending deletion.`);
    return { key: r.key, view };
  }

  /** A key with material, in any state (management operations). */
  private existing(r: Resolved): KeyRecord {
    if (!r.key) throw new AwsError('KMSInvalidStateException', `${this.keyArn(r.identity)} is pending import.`);
    return r.key;
  }

  private keyState(r: Resolved): string {
    if (!r.key) return r.row!.state;
    return r.key.status === 'active' ? 'Enabled' : r.key.status === 'disabled' ? 'Disabled' : 'PendingDeletion';
  }

  /** KeyMetadata as DescribeKey, CreateKey return it. */
  private metadata(r: Resolved) {
    const v = this.view(r);
    const state = this.keyState(r);
    const created = r.key?.createdAt ?? r.row!.createdAt;
    const deletionAt = r.key ? r.key.deletionAt : r.row!.deletionAt;
    const out: Record<string, unknown> = {
      AWSAccountId: this.settings.accountId,
      KeyId: r.identity,
      Arn: this.keyArn(r.identity),
      CreationDate: epoch(created),
      Enabled: state === 'Enabled',
      Description: r.key?.description ?? r.row!.description,
      KeyUsage: v.keyUsage,
      KeyState: state,
      Origin: v.origin,
      KeyManager: 'CUSTOMER',
      CustomerMasterKeySpec: v.keySpec,
      KeySpec: v.keySpec,
      MultiRegion: false,
    };
    if (deletionAt) out.DeletionDate = epoch(deletionAt);
    if (v.origin === 'EXTERNAL') out.ExpirationModel = 'KEY_MATERIAL_DOES_NOT_EXPIRE';
    if (v.keyUsage === 'ENCRYPT_DECRYPT') out.EncryptionAlgorithms = v.spec.encryptionAlgorithms;
    if (v.keyUsage === 'SIGN_VERIFY') out.SigningAlgorithms = v.spec.signingAlgorithms;
    if (v.keyUsage === 'GENERATE_VERIFY_MAC') out.MacAlgorithms = v.spec.macAlgorithms;
    return out;
  }

  // ---- dispatch ----------------------------------------------------------------------------

  /** Checks the caller's role for `op` (AccessDeniedException) and runs it. */
  async run<O extends AwsOperation>(op: O, caller: Caller, req: AwsRequest<O>, note: AuditNote): Promise<unknown> {
    const perm = PERMISSION[op];
    if (!can(caller.principal, perm)) throw new AwsError('AccessDeniedException', `principal ${caller.principal.name} lacks the ${perm} permission needed for ${op}`);
    if (op === 'CreateKey' && (req as AwsRequest<'CreateKey'>).Origin === 'EXTERNAL' && !can(caller.principal, 'import'))
      throw new AwsError('AccessDeniedException', `principal ${caller.principal.name} lacks the import permission needed for an EXTERNAL key`);
    const fn = (this as unknown as Record<string, (c: Caller, r: unknown, n: AuditNote) => Promise<unknown>>)[`op${op}`];
    return fn!.call(this, caller, req, note);
  }

  // ---- keys --------------------------------------------------------------------------------

  async opCreateKey(caller: Caller, req: AwsRequest<'CreateKey'>, note: AuditNote) {
    // The deprecated name of the same member: two different values would make one key silently not the asked one.
    if (req.KeySpec !== undefined && req.CustomerMasterKeySpec !== undefined && req.KeySpec !== req.CustomerMasterKeySpec)
      throw awsValidation('KeySpec and CustomerMasterKeySpec name different key specs; send KeySpec only');
    const keySpec = req.KeySpec ?? req.CustomerMasterKeySpec ?? 'SYMMETRIC_DEFAULT';
    const spec = KEY_SPECS[keySpec];
    if (!spec) throw new AwsError('UnsupportedOperationException', `KeySpec ${keySpec.slice(0, 64)} is not supported; kmsd offers ${Object.keys(KEY_SPECS).join(', ')}`);
    const keyUsage = (req.KeyUsage ?? spec.usages[0]) as KeyUsage;
    if (!spec.usages.includes(keyUsage))
      throw awsValidation(`KeyUsage ${String(req.KeyUsage).slice(0, 64)} is not valid for KeySpec ${keySpec}; use ${spec.usages.join(' or ')}`);
    const origin = req.Origin ?? 'AWS_KMS';
    if (origin !== 'AWS_KMS' && origin !== 'EXTERNAL')
      throw new AwsError('UnsupportedOperationException', `Origin ${origin.slice(0, 64)} is not supported; kmsd offers AWS_KMS and EXTERNAL`);
    if (req.MultiRegion) throw new AwsError('UnsupportedOperationException', 'multi-Region keys are not supported');
    if (req.CustomKeyStoreId || req.XksKeyId) throw new AwsError('UnsupportedOperationException', 'custom key stores are not supported');
    const tags = this.checkTags(req.Tags ?? []);
    // Key policies are not evaluated (kmsd's roles decide); a Policy is accepted and ignored.
    // The HSM first: with it down no key can be made (503 before any row is written).
    this.s.regions.require(caller.scope.region);
    const identity = newIdentity();
    note.keyIdentity = identity;
    const row: AwsKeyRow = {
      identity,
      ...caller.scope,
      keySpec,
      keyUsage,
      origin,
      description: req.Description ?? '',
      state: origin === 'EXTERNAL' ? 'PendingImport' : 'Created',
      deletionAt: null,
      createdAt: this.s.clock.nowIso(),
    };
    // Written before the key exists: no process ever sees the key without its AWS attributes.
    await this.repo.insertKey(row);
    let key: KeyRecord | undefined;
    if (origin === 'AWS_KMS') {
      try {
        key = await this.s.keys.create(caller.scope, { name: identity, keyType: spec.keyType, description: req.Description ?? '' }, { identity });
      } catch (e) {
        await this.repo.deleteKey(identity).catch(() => undefined);
        throw e;
      }
      note.keyVersion = '1';
    }
    if (tags.length) await this.repo.putTags(identity, tags, MAX_TAGS);
    note.detail = { keySpec, keyUsage, origin };
    return { KeyMetadata: this.metadata(key ? { identity, key, row } : { identity, row }) };
  }

  async opDescribeKey(caller: Caller, req: AwsRequest<'DescribeKey'>, note: AuditNote) {
    return { KeyMetadata: this.metadata(await this.resolve(caller, req.KeyId, note)) };
  }

  async opListKeys(caller: Caller, req: AwsRequest<'ListKeys'>) {
    const native = this.s.keys.list(caller.scope, {}).map((k) => k.identity);
    const seen = new Set(native);
    const pending = (await this.repo.keysWithoutMaterial(caller.scope)).map((r) => r.identity).filter((id) => !seen.has(id));
    const page = paginate([...native, ...pending], req.Limit ?? 100, req.Marker);
    return { Keys: page.items.map((id) => ({ KeyId: id, KeyArn: this.keyArn(id) })), ...page.more };
  }

  // ---- aliases -----------------------------------------------------------------------------

  private checkAliasName(name: string): void {
    if (!ALIAS_NAME.test(name)) throw new AwsError('InvalidAliasNameException', `${name.slice(0, 256)} is not a valid alias name: alias/ then letters, digits, /, _ and -`);
    if (name.startsWith('alias/aws/')) throw new AwsError('InvalidAliasNameException', 'alias names beginning with alias/aws/ are reserved for AWS managed keys');
  }

  /** An alias target: a key id or key ARN, never an alias (AWS rule). */
  private async aliasTarget(caller: Caller, keyId: string, note: AuditNote): Promise<Resolved> {
    const parsed = this.parseKeyId(keyId);
    if (parsed.alias) throw awsValidation('TargetKeyId: must be a key id or key ARN, not an alias');
    return this.resolve(caller, keyId, note);
  }

  async opCreateAlias(caller: Caller, req: AwsRequest<'CreateAlias'>, note: AuditNote) {
    this.checkAliasName(req.AliasName);
    const target = await this.aliasTarget(caller, req.TargetKeyId, note);
    if (target.key?.status === 'pending_deletion') throw new AwsError('KMSInvalidStateException', `${this.keyArn(target.identity)} is pending deletion.`);
    if (!(await this.repo.createAlias(caller.scope, req.AliasName, target.identity, this.s.clock.nowIso())))
      throw new AwsError('AlreadyExistsException', `An alias with the name ${this.aliasArn(req.AliasName)} already exists`);
    note.detail = { aliasName: req.AliasName };
    return {};
  }

  async opUpdateAlias(caller: Caller, req: AwsRequest<'UpdateAlias'>, note: AuditNote) {
    this.checkAliasName(req.AliasName);
    const current = await this.repo.alias(caller.scope, req.AliasName);
    if (!current) throw notFound(`Alias '${this.aliasArn(req.AliasName)}'`);
    const target = await this.aliasTarget(caller, req.TargetKeyId, note);
    const old = await this.resolveIdentity(caller.scope, current.keyIdentity);
    if (old) {
      const a = this.view(old);
      const b = this.view(target);
      if (a.keyUsage !== b.keyUsage || (a.keySpec === 'SYMMETRIC_DEFAULT') !== (b.keySpec === 'SYMMETRIC_DEFAULT'))
        throw awsValidation('TargetKeyId: an alias can only move to a key of the same type and key usage');
    }
    if (!(await this.repo.updateAlias(caller.scope, req.AliasName, target.identity, this.s.clock.nowIso()))) throw notFound(`Alias '${this.aliasArn(req.AliasName)}'`);
    note.detail = { aliasName: req.AliasName };
    return {};
  }

  async opDeleteAlias(caller: Caller, req: AwsRequest<'DeleteAlias'>, note: AuditNote) {
    const current = await this.repo.alias(caller.scope, req.AliasName);
    if (!current || !(await this.repo.deleteAlias(caller.scope, req.AliasName))) throw notFound(`Alias '${this.aliasArn(req.AliasName)}'`);
    note.keyIdentity = current.keyIdentity;
    note.detail = { aliasName: req.AliasName };
    return {};
  }

  async opListAliases(caller: Caller, req: AwsRequest<'ListAliases'>, note: AuditNote) {
    const forKey = req.KeyId ? (await this.resolve(caller, req.KeyId, note)).identity : undefined;
    const rows = [];
    // Aliases of keys destroyed since are left out (and their rows go with the key's AWS rows).
    for (const a of await this.repo.aliases(caller.scope, forKey)) if (await this.resolveIdentity(caller.scope, a.keyIdentity)) rows.push(a);
    const page = paginate(rows, req.Limit ?? 50, req.Marker);
    return {
      Aliases: page.items.map((a) => ({
        AliasName: a.aliasName,
        AliasArn: this.aliasArn(a.aliasName),
        TargetKeyId: a.keyIdentity,
        CreationDate: epoch(a.createdAt),
        LastUpdatedDate: epoch(a.updatedAt),
      })),
      ...page.more,
    };
  }

  // ---- encryption --------------------------------------------------------------------------

  /**
   * Symmetric Encrypt: the native encrypt (the same service call, its token call in the turn's
   * burst) with the canonical context as AAD, in kmsd's blob.
   */
  private async sealSymmetric(key: KeyRecord, plaintext: Buffer, context: Record<string, string> | undefined, note: AuditNote): Promise<Buffer> {
    const out = await this.s.crypto.encryptInBurst(key, plaintext, canonicalContext(context));
    const { version, data } = parseVersioned(out.ciphertext, 'ciphertext');
    note.keyVersion = out.keyVersion;
    return encodeBlob(key.identity, version, data);
  }

  private checkSymmetricAlgorithm(alg: string | undefined): void {
    if (alg !== undefined && alg !== 'SYMMETRIC_DEFAULT')
      throw new AwsError('InvalidKeyUsageException', `EncryptionAlgorithm ${alg.slice(0, 64)} is not valid for a symmetric key; use SYMMETRIC_DEFAULT`);
  }

  private async oaep(key: KeyRecord, view: AwsView, alg: string | undefined, context: Record<string, string> | undefined) {
    if (!alg) throw awsValidation('EncryptionAlgorithm: required for an asymmetric key');
    const hash = OAEP_HASH[alg];
    if (!hash || !view.spec.encryptionAlgorithms?.includes(alg))
      throw new AwsError('InvalidKeyUsageException', `EncryptionAlgorithm ${alg.slice(0, 64)} is not valid for ${view.keySpec}; use RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256`);
    if (context && Object.keys(context).length) throw awsValidation('EncryptionContext: not supported with asymmetric keys');
    const supported = await this.s.regions.oaepHashes(key.region);
    // Decryption runs in the token: output it could not take back is never handed out.
    if (!supported.includes(hash.token))
      throw new AwsError('UnsupportedOperationException', `${alg}: the token of region ${key.region} does RSA-OAEP with ${supported.join(', ') || 'no hash'} only`);
    return hash;
  }

  async opEncrypt(caller: Caller, req: AwsRequest<'Encrypt'>, note: AuditNote) {
    const r = await this.resolve(caller, req.KeyId, note);
    const { key, view } = this.usable(r, 'ENCRYPT_DECRYPT', 'Encrypt');
    if (!isAsymmetric(key.keyType)) {
      this.checkSymmetricAlgorithm(req.EncryptionAlgorithm);
      const blob = await this.sealSymmetric(key, req.Plaintext, req.EncryptionContext, note);
      return { CiphertextBlob: b64(blob), KeyId: this.keyArn(key.identity), EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' };
    }
    const hash = await this.oaep(key, view, req.EncryptionAlgorithm, req.EncryptionContext);
    // RSA encryption is a public-key operation: done here on the key's exported SPKI (no secret involved).
    const pem = this.s.crypto.publicKey(key, key.latestVersion).keys[String(key.latestVersion)]!;
    let ct: Buffer;
    try {
      ct = publicEncrypt({ key: pem, padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash.node }, req.Plaintext);
    } catch {
      throw awsValidation(`Plaintext: too long for ${req.EncryptionAlgorithm} with ${view.keySpec}`);
    }
    note.keyVersion = String(key.latestVersion);
    return { CiphertextBlob: b64(ct), KeyId: this.keyArn(key.identity), EncryptionAlgorithm: req.EncryptionAlgorithm };
  }

  /** Decrypts with the key the blob (or, for RSA, the KeyId) names; the source half of Decrypt and ReEncrypt. */
  private async open(caller: Caller, blob: Buffer, keyId: string | undefined, alg: string | undefined, context: Record<string, string> | undefined, note: AuditNote) {
    let r: Resolved | undefined;
    if (keyId !== undefined) {
      r = await this.resolve(caller, keyId, note);
      const { key, view } = this.usable(r, 'ENCRYPT_DECRYPT', 'Decrypt');
      if (isAsymmetric(key.keyType)) {
        const hash = await this.oaep(key, view, alg, context);
        // AWS RSA ciphertext names no version: it was made with GetPublicKey's key, the latest version.
        const out = await this.s.crypto.decryptAsymmetric(key, blob, key.latestVersion, hash.token);
        note.keyVersion = out.keyVersion;
        return { key, plaintext: Buffer.from(out.plaintext, 'base64'), algorithm: alg! };
      }
    }
    this.checkSymmetricAlgorithm(alg);
    const parsed = decodeBlob(blob);
    if (r && parsed.identity !== r.identity)
      throw new AwsError('IncorrectKeyException', 'The key ID in the request does not identify a KMS key that can perform this operation.');
    if (!r) {
      // A blob naming a key this caller cannot see is foreign to it, not a lookup by KeyId.
      r = await this.resolveIdentity(caller.scope, parsed.identity);
      if (!r) throw new AwsError('InvalidCiphertextException', 'the ciphertext names a key this caller does not have');
      note.keyIdentity = r.identity;
    }
    const { key } = this.usable(r, 'ENCRYPT_DECRYPT', 'Decrypt');
    const out = await this.s.crypto.decryptInBurst(key, formatVersioned(parsed.version, parsed.sealed), canonicalContext(context));
    note.keyVersion = out.keyVersion;
    return { key, plaintext: out.plaintext, algorithm: 'SYMMETRIC_DEFAULT' };
  }

  async opDecrypt(caller: Caller, req: AwsRequest<'Decrypt'>, note: AuditNote) {
    if (req.Recipient !== undefined) throw new AwsError('UnsupportedOperationException', 'Recipient (Nitro Enclaves attestation) is not supported');
    const out = await this.open(caller, req.CiphertextBlob, req.KeyId, req.EncryptionAlgorithm, req.EncryptionContext, note);
    try {
      return { KeyId: this.keyArn(out.key.identity), Plaintext: b64(out.plaintext), EncryptionAlgorithm: out.algorithm };
    } finally {
      out.plaintext.fill(0);
    }
  }

  async opReEncrypt(caller: Caller, req: AwsRequest<'ReEncrypt'>, note: AuditNote) {
    const destination = await this.resolve(caller, req.DestinationKeyId);
    const dest = this.usable(destination, 'ENCRYPT_DECRYPT', 'ReEncrypt');
    const source = await this.open(caller, req.CiphertextBlob, req.SourceKeyId, req.SourceEncryptionAlgorithm, req.SourceEncryptionContext, note);
    try {
      let blob: Buffer;
      let alg = 'SYMMETRIC_DEFAULT';
      if (!isAsymmetric(dest.key.keyType)) {
        this.checkSymmetricAlgorithm(req.DestinationEncryptionAlgorithm);
        blob = await this.sealSymmetric(dest.key, source.plaintext, req.DestinationEncryptionContext, {});
      } else {
        const hash = await this.oaep(dest.key, dest.view, req.DestinationEncryptionAlgorithm, req.DestinationEncryptionContext);
        const pem = this.s.crypto.publicKey(dest.key, dest.key.latestVersion).keys[String(dest.key.latestVersion)]!;
        blob = publicEncrypt({ key: pem, padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash.node }, source.plaintext);
        alg = req.DestinationEncryptionAlgorithm!;
      }
      note.detail = { destinationKey: dest.key.identity };
      return {
        CiphertextBlob: b64(blob),
        SourceKeyId: this.keyArn(source.key.identity),
        KeyId: this.keyArn(dest.key.identity),
        SourceEncryptionAlgorithm: source.algorithm,
        DestinationEncryptionAlgorithm: alg,
      };
    } finally {
      source.plaintext.fill(0);
    }
  }

  private async dataKey(caller: Caller, req: AwsRequest<'GenerateDataKey'>, note: AuditNote, includePlaintext: boolean) {
    if (req.Recipient !== undefined) throw new AwsError('UnsupportedOperationException', 'Recipient (Nitro Enclaves attestation) is not supported');
    if ((req.KeySpec === undefined) === (req.NumberOfBytes === undefined)) throw awsValidation('exactly one of KeySpec or NumberOfBytes is required');
    const r = await this.resolve(caller, req.KeyId, note);
    const { key } = this.usable(r, 'ENCRYPT_DECRYPT', 'GenerateDataKey');
    if (isAsymmetric(key.keyType)) throw new AwsError('InvalidKeyUsageException', `${this.keyArn(key.identity)} is asymmetric; data keys need a symmetric key`);
    const bytes = req.NumberOfBytes ?? (req.KeySpec === 'AES_128' ? 16 : 32);
    const aad = canonicalContext(req.EncryptionContext);
    let ciphertext: string;
    let plaintext: Buffer;
    if (bytes === 16 || bytes === 32) {
      // The native generate-data-key: the token's RNG, then the same encrypt.
      const out = this.s.crypto.generateDataKey(key, bytes, true, aad);
      ciphertext = out.ciphertext;
      plaintext = Buffer.from(out.plaintext!, 'base64');
    } else {
      plaintext = this.s.regions.require(key.region).random(bytes);
      ciphertext = this.s.crypto.encrypt(key, plaintext, aad).ciphertext;
    }
    const { version, data } = parseVersioned(ciphertext, 'ciphertext');
    note.keyVersion = String(version);
    const out: Record<string, unknown> = { CiphertextBlob: b64(encodeBlob(key.identity, version, data)), KeyId: this.keyArn(key.identity) };
    if (includePlaintext) out.Plaintext = b64(plaintext);
    plaintext.fill(0);
    return out;
  }

  opGenerateDataKey(caller: Caller, req: AwsRequest<'GenerateDataKey'>, note: AuditNote) {
    return this.dataKey(caller, req, note, true);
  }

  opGenerateDataKeyWithoutPlaintext(caller: Caller, req: AwsRequest<'GenerateDataKeyWithoutPlaintext'>, note: AuditNote) {
    return this.dataKey(caller, req, note, false);
  }

  async opGenerateRandom(caller: Caller, req: AwsRequest<'GenerateRandom'>) {
    if (req.CustomKeyStoreId) throw new AwsError('UnsupportedOperationException', 'custom key stores are not supported');
    if (req.Recipient !== undefined) throw new AwsError('UnsupportedOperationException', 'Recipient (Nitro Enclaves attestation) is not supported');
    const random = this.s.regions.require(caller.scope.region).random(req.NumberOfBytes ?? 32);
    return { Plaintext: b64(random) };
  }

  // ---- signatures --------------------------------------------------------------------------

  private signingRequest(view: AwsView, keyArn: string, alg: string, messageType: string | undefined, message: Buffer) {
    const a = SIGNING_ALGORITHMS[alg];
    if (!a || !view.spec.signingAlgorithms?.includes(alg))
      throw new AwsError('InvalidKeyUsageException', `SigningAlgorithm ${alg.slice(0, 64)} is not valid for ${keyArn} (${view.keySpec}); use ${view.spec.signingAlgorithms?.join(', ')}`);
    if (messageType === 'EXTERNAL_MU') throw new AwsError('UnsupportedOperationException', 'MessageType EXTERNAL_MU is for ML-DSA keys, which kmsd does not offer');
    const prehashed = messageType === 'DIGEST';
    if (prehashed && !a.hash) throw awsValidation('MessageType: ED25519_SHA_512 signs the message itself; use RAW');
    return { input: message, prehashed, hashAlgorithm: a.hash, signatureAlgorithm: a.rsa };
  }

  async opSign(caller: Caller, req: AwsRequest<'Sign'>, note: AuditNote) {
    const r = await this.resolve(caller, req.KeyId, note);
    const { key, view } = this.usable(r, 'SIGN_VERIFY', 'Sign');
    const out = await this.s.crypto.sign(key, this.signingRequest(view, this.keyArn(key.identity), req.SigningAlgorithm, req.MessageType, req.Message));
    note.keyVersion = out.keyVersion;
    return { KeyId: this.keyArn(key.identity), Signature: b64(parseVersioned(out.signature, 'signature').data), SigningAlgorithm: req.SigningAlgorithm };
  }

  /** Versions a signature or MAC may come from, newest first (AWS signatures carry no version). */
  private verifiableVersions(key: KeyRecord): number[] {
    return key.versions.filter((v) => v.status === 'enabled' && v.version >= key.minDecryptionVersion).map((v) => v.version).reverse();
  }

  async opVerify(caller: Caller, req: AwsRequest<'Verify'>, note: AuditNote) {
    const r = await this.resolve(caller, req.KeyId, note);
    const { key, view } = this.usable(r, 'SIGN_VERIFY', 'Verify');
    const signing = this.signingRequest(view, this.keyArn(key.identity), req.SigningAlgorithm, req.MessageType, req.Message);
    for (const version of this.verifiableVersions(key)) {
      const out = await this.s.crypto.verify(key, { ...signing, signature: formatVersioned(version, req.Signature) });
      if (out.valid) {
        note.keyVersion = String(version);
        return { KeyId: this.keyArn(key.identity), SignatureValid: true, SigningAlgorithm: req.SigningAlgorithm };
      }
    }
    throw new AwsError('KMSInvalidSignatureException', 'the signature is not valid for this key, message and signing algorithm');
  }

  async opGetPublicKey(caller: Caller, req: AwsRequest<'GetPublicKey'>, note: AuditNote) {
    const r = await this.resolve(caller, req.KeyId, note);
    const { key, view } = this.usable(r, null, 'GetPublicKey');
    if (!isAsymmetric(key.keyType)) throw new AwsError('UnsupportedOperationException', `${this.keyArn(key.identity)} is not an asymmetric key`);
    const pem = this.s.crypto.publicKey(key, key.latestVersion).keys[String(key.latestVersion)]!;
    note.keyVersion = String(key.latestVersion);
    const out: Record<string, unknown> = {
      KeyId: this.keyArn(key.identity),
      PublicKey: b64(createPublicKey(pem).export({ type: 'spki', format: 'der' })),
      CustomerMasterKeySpec: view.keySpec,
      KeySpec: view.keySpec,
      KeyUsage: view.keyUsage,
    };
    if (view.keyUsage === 'ENCRYPT_DECRYPT') out.EncryptionAlgorithms = view.spec.encryptionAlgorithms;
    else out.SigningAlgorithms = view.spec.signingAlgorithms;
    return out;
  }

  // ---- MACs --------------------------------------------------------------------------------

  private macAlgorithm(view: AwsView, keyArn: string, alg: string): void {
    if (!MAC_ALGORITHMS[alg] || !view.spec.macAlgorithms?.includes(alg))
      throw new AwsError('InvalidKeyUsageException', `MacAlgorithm ${alg.slice(0, 64)} is not valid for ${keyArn} (${view.keySpec}); use ${view.spec.macAlgorithms?.join(', ')}`);
  }

  async opGenerateMac(caller: Caller, req: AwsRequest<'GenerateMac'>, note: AuditNote) {
    const r = await this.resolve(caller, req.KeyId, note);
    const { key, view } = this.usable(r, 'GENERATE_VERIFY_MAC', 'GenerateMac');
    this.macAlgorithm(view, this.keyArn(key.identity), req.MacAlgorithm);
    const out = this.s.crypto.hmac(key, req.Message);
    note.keyVersion = out.keyVersion;
    return { Mac: b64(parseVersioned(out.hmac, 'hmac').data), MacAlgorithm: req.MacAlgorithm, KeyId: this.keyArn(key.identity) };
  }

  async opVerifyMac(caller: Caller, req: AwsRequest<'VerifyMac'>, note: AuditNote) {
    const r = await this.resolve(caller, req.KeyId, note);
    const { key, view } = this.usable(r, 'GENERATE_VERIFY_MAC', 'VerifyMac');
    this.macAlgorithm(view, this.keyArn(key.identity), req.MacAlgorithm);
    for (const version of this.verifiableVersions(key)) {
      if (this.s.crypto.verifyHmac(key, req.Message, formatVersioned(version, req.Mac)).valid) {
        note.keyVersion = String(version);
        return { KeyId: this.keyArn(key.identity), MacValid: true, MacAlgorithm: req.MacAlgorithm };
      }
    }
    throw new AwsError('KMSInvalidMacException', 'the MAC is not valid for this key, message and MAC algorithm');
  }

  // ---- key state ---------------------------------------------------------------------------

  async opEnableKey(caller: Caller, req: AwsRequest<'EnableKey'>, note: AuditNote) {
    await this.s.keys.enable(this.existing(await this.resolve(caller, req.KeyId, note)));
    return {};
  }

  async opDisableKey(caller: Caller, req: AwsRequest<'DisableKey'>, note: AuditNote) {
    await this.s.keys.disable(this.existing(await this.resolve(caller, req.KeyId, note)));
    return {};
  }

  async opScheduleKeyDeletion(caller: Caller, req: AwsRequest<'ScheduleKeyDeletion'>, note: AuditNote) {
    const r = await this.resolve(caller, req.KeyId, note);
    const days = req.PendingWindowInDays ?? DEFAULT_DELETION_WINDOW_DAYS;
    let deletionAt: string;
    if (r.key) deletionAt = (await this.s.keys.scheduleDeletion(r.key, days)).deletionAt!;
    else {
      deletionAt = new Date(this.s.clock.nowMs() + days * 86_400_000).toISOString();
      if (!(await this.repo.setKeyState(r.identity, 'PendingImport', 'PendingDeletion', deletionAt)))
        throw new AwsError('KMSInvalidStateException', `${this.keyArn(r.identity)} is pending deletion.`);
    }
    return { KeyId: this.keyArn(r.identity), DeletionDate: epoch(deletionAt), KeyState: 'PendingDeletion', PendingWindowInDays: days };
  }

  async opCancelKeyDeletion(caller: Caller, req: AwsRequest<'CancelKeyDeletion'>, note: AuditNote) {
    const r = await this.resolve(caller, req.KeyId, note);
    if (r.key) {
      // As in AWS, a key whose deletion is cancelled is Disabled (kmsd's native cancel re-activates it).
      const key = await this.s.keys.cancelDeletion(r.key);
      await this.s.keys.disable(key);
    } else if (!(await this.repo.setKeyState(r.identity, 'PendingDeletion', 'PendingImport', null)))
      throw new AwsError('KMSInvalidStateException', `${this.keyArn(r.identity)} is not pending deletion.`);
    return { KeyId: this.keyArn(r.identity) };
  }

  // ---- rotation ----------------------------------------------------------------------------

  /** Rotation is for symmetric encryption keys whose material kmsd generated (AWS rule). */
  private rotatable(r: Resolved): KeyRecord {
    const key = this.existing(r);
    const view = this.view(r);
    if (view.keySpec !== 'SYMMETRIC_DEFAULT') throw new AwsError('UnsupportedOperationException', `${this.keyArn(key.identity)} (${view.keySpec}) does not support rotation`);
    if (key.imported && !key.allowRotation) throw new AwsError('UnsupportedOperationException', `${this.keyArn(key.identity)} has imported key material, which does not rotate`);
    if (key.status === 'disabled') throw new AwsError('DisabledException', `${this.keyArn(key.identity)} is disabled.`);
    if (key.status === 'pending_deletion') throw new AwsError('KMSInvalidStateException', `${this.keyArn(key.identity)} is pending deletion.`);
    return key;
  }

  async opEnableKeyRotation(caller: Caller, req: AwsRequest<'EnableKeyRotation'>, note: AuditNote) {
    const key = this.rotatable(await this.resolve(caller, req.KeyId, note));
    await this.s.rotation.updatePolicy(key, { keyRotationEnabled: true, rotationPeriodInDays: req.RotationPeriodInDays ?? DEFAULT_ROTATION_DAYS }, caller.requestId);
    return {};
  }

  async opDisableKeyRotation(caller: Caller, req: AwsRequest<'DisableKeyRotation'>, note: AuditNote) {
    const key = this.rotatable(await this.resolve(caller, req.KeyId, note));
    await this.s.rotation.updatePolicy(key, { keyRotationEnabled: false }, caller.requestId);
    return {};
  }

  async opGetKeyRotationStatus(caller: Caller, req: AwsRequest<'GetKeyRotationStatus'>, note: AuditNote) {
    const r = await this.resolve(caller, req.KeyId, note);
    const key = this.existing(r);
    const out: Record<string, unknown> = { KeyId: this.keyArn(key.identity), KeyRotationEnabled: key.rotationEnabled };
    if (key.rotationEnabled && key.rotationPeriodDays) out.RotationPeriodInDays = key.rotationPeriodDays;
    if (key.rotationEnabled && key.nextRotationAt) out.NextRotationDate = epoch(key.nextRotationAt);
    return out;
  }

  async opRotateKeyOnDemand(caller: Caller, req: AwsRequest<'RotateKeyOnDemand'>, note: AuditNote) {
    const key = await this.s.rotation.rotateManual(this.rotatable(await this.resolve(caller, req.KeyId, note)));
    note.keyVersion = String(key.latestVersion);
    return { KeyId: this.keyArn(key.identity) };
  }

  async opListKeyRotations(caller: Caller, req: AwsRequest<'ListKeyRotations'>, note: AuditNote) {
    const r = await this.resolve(caller, req.KeyId, note);
    const key = this.existing(r);
    if (this.view(r).keySpec !== 'SYMMETRIC_DEFAULT') throw new AwsError('UnsupportedOperationException', `${this.keyArn(key.identity)} does not support rotation`);
    // Every version after the first is one rotation. kmsd does not record whether it was scheduled or manual.
    const page = paginate(key.versions.filter((v) => v.version > 1), req.Limit ?? 100, req.Marker);
    return { Rotations: page.items.map((v) => ({ KeyId: this.keyArn(key.identity), RotationDate: epoch(v.createdAt) })), ...page.more };
  }

  // ---- tags --------------------------------------------------------------------------------

  private checkTags(tags: { TagKey: string; TagValue: string }[]): AwsTag[] {
    const seen = new Set<string>();
    for (const t of tags) {
      if (t.TagKey.startsWith('aws:')) throw new AwsError('TagException', 'tag keys beginning with aws: are reserved for AWS');
      if (seen.has(t.TagKey)) throw new AwsError('TagException', `duplicate tag key ${t.TagKey}`);
      seen.add(t.TagKey);
    }
    return tags.map((t) => ({ key: t.TagKey, value: t.TagValue }));
  }

  async opTagResource(caller: Caller, req: AwsRequest<'TagResource'>, note: AuditNote) {
    const r = await this.resolve(caller, req.KeyId, note);
    if (r.key?.status === 'pending_deletion') throw new AwsError('KMSInvalidStateException', `${this.keyArn(r.identity)} is pending deletion.`);
    if (!(await this.repo.putTags(r.identity, this.checkTags(req.Tags), MAX_TAGS)))
      throw new AwsError('LimitExceededException', `a key has at most ${MAX_TAGS} tags`);
    return {};
  }

  async opUntagResource(caller: Caller, req: AwsRequest<'UntagResource'>, note: AuditNote) {
    const r = await this.resolve(caller, req.KeyId, note);
    if (r.key?.status === 'pending_deletion') throw new AwsError('KMSInvalidStateException', `${this.keyArn(r.identity)} is pending deletion.`);
    await this.repo.removeTags(r.identity, req.TagKeys);
    return {};
  }

  async opListResourceTags(caller: Caller, req: AwsRequest<'ListResourceTags'>, note: AuditNote) {
    const r = await this.resolve(caller, req.KeyId, note);
    const page = paginate(await this.repo.tags(r.identity), req.Limit ?? 50, req.Marker);
    return { Tags: page.items.map((t) => ({ TagKey: t.key, TagValue: t.value })), ...page.more };
  }

  // ---- import ------------------------------------------------------------------------------

  /** The EXTERNAL key still waiting for material (AWS allows import only into those here). */
  private pendingImport(r: Resolved): AwsKeyRow {
    if (r.key || r.row?.origin !== 'EXTERNAL')
      throw new AwsError(
        'UnsupportedOperationException',
        r.row?.origin === 'EXTERNAL' ? `${this.keyArn(r.identity)} already has its key material; kmsd does not re-import` : `${this.keyArn(r.identity)} has Origin AWS_KMS, not EXTERNAL`,
      );
    if (r.row.state !== 'PendingImport') throw new AwsError('KMSInvalidStateException', `${this.keyArn(r.identity)} is pending deletion.`);
    return r.row;
  }

  async opGetParametersForImport(caller: Caller, req: AwsRequest<'GetParametersForImport'>, note: AuditNote) {
    const row = this.pendingImport(await this.resolve(caller, req.KeyId, note));
    const alg = WRAPPING[req.WrappingAlgorithm];
    if (!alg)
      throw new AwsError('UnsupportedOperationException', `WrappingAlgorithm ${req.WrappingAlgorithm.slice(0, 64)} is not supported; kmsd offers ${Object.keys(WRAPPING).join(', ')} (as the token allows)`);
    if (!['RSA_2048', 'RSA_3072', 'RSA_4096'].includes(req.WrappingKeySpec))
      throw new AwsError('UnsupportedOperationException', `WrappingKeySpec ${req.WrappingKeySpec.slice(0, 64)} is not supported`);
    const spec = KEY_SPECS[row.keySpec]!;
    const p = await this.s.byok.importParameters(caller.scope, spec.keyType, alg);
    note.detail = { wrappingAlgorithm: req.WrappingAlgorithm, expiresAt: p.expiresAt };
    return {
      KeyId: this.keyArn(row.identity),
      // The token names the key it was issued for, so it cannot import into another EXTERNAL key.
      ImportToken: b64(Buffer.from(`${row.identity}\n${p.importToken}`, 'utf8')),
      PublicKey: b64(createPublicKey(p.wrappingPublicKeyPem).export({ type: 'spki', format: 'der' })),
      ParametersValidTo: epoch(p.expiresAt),
    };
  }

  async opImportKeyMaterial(caller: Caller, req: AwsRequest<'ImportKeyMaterial'>, note: AuditNote) {
    const row = this.pendingImport(await this.resolve(caller, req.KeyId, note));
    if (req.ExpirationModel === 'KEY_MATERIAL_EXPIRES' || req.ValidTo !== undefined)
      throw new AwsError('UnsupportedOperationException', 'expiring key material is not supported; use ExpirationModel KEY_MATERIAL_DOES_NOT_EXPIRE');
    const [forKey, importToken] = req.ImportToken.toString('utf8').split('\n');
    if (forKey !== row.identity || !importToken) throw new AwsError('InvalidImportTokenException', 'the import token was not issued for this key');
    const spec = KEY_SPECS[row.keySpec]!;
    try {
      await this.s.byok.importKey(
        caller.scope,
        { name: row.identity, keyType: spec.keyType, description: row.description, importToken, wrappedKeyMaterial: b64(req.EncryptedKeyMaterial) },
        { identity: row.identity },
      );
    } catch (e) {
      if (e instanceof KmsError && e.code === 'ValidationError') {
        if (/^importToken: expired/.test(e.message)) throw new AwsError('ExpiredImportTokenException', e.message);
        if (/^importToken:/.test(e.message)) throw new AwsError('InvalidImportTokenException', e.message);
        if (/^wrappedKeyMaterial:/.test(e.message)) throw new AwsError('InvalidCiphertextException', e.message.replace(/^wrappedKeyMaterial/, 'EncryptedKeyMaterial'));
      }
      throw e;
    }
    await this.repo.setKeyState(row.identity, 'PendingImport', 'Created', null);
    note.keyVersion = '1';
    return {};
  }
}

function sameScope(row: AwsKeyRow, scope: Scope): boolean {
  return row.organisation === scope.organisation && row.region === scope.region && row.project === scope.project;
}

/** One page of a list: `Marker` is where the previous page stopped (opaque to clients). */
function paginate<T>(items: T[], limit: number, marker: string | undefined): { items: T[]; more: { Truncated: boolean; NextMarker?: string } } {
  let start = 0;
  if (marker !== undefined) {
    const m = MARKER.exec(marker);
    if (!m) throw new AwsError('InvalidMarkerException', 'Marker: not a marker this API returned');
    start = Number(m[1]);
  }
  const page = items.slice(start, start + limit);
  const next = start + page.length;
  return next < items.length ? { items: page, more: { Truncated: true, NextMarker: `kmsd:${next}` } } : { items: page, more: { Truncated: false } };
}
