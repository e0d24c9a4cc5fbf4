import { z } from 'zod';
import { copyStringMap } from '../string-map.js';
import { isBase64 } from '../crypto/versioned.js';
import { AwsError, awsValidation } from './errors.js';

/**
 * Request members of every operation (AWS KMS API Reference, "Request Syntax"): names, types and
 * bounds as AWS declares them. Objects are loose, as in AWS's own JSON protocol: a member a newer
 * SDK adds is ignored, not refused. Blobs arrive as standard base64 and leave the schema as bytes.
 */
const blob = (min: number, max: number) =>
  z
    .string()
    .refine(isBase64, 'must be standard base64')
    .transform((s) => Buffer.from(s, 'base64'))
    .refine((b) => b.length >= min && b.length <= max, `must be ${min} to ${max} bytes`);

/** The canonical form counts its pairs in 16 bits (see canonicalContext): more could not be bound as AAD. */
const MAX_CONTEXT_PAIRS = 0xffff;

/** KeyId's bounds (characters). */
const KEY_ID_MAX = 2048;

/** KeyId: identity, key ARN, alias name or alias ARN (1–2048 characters). */
const keyId = z.string().min(1).max(KEY_ID_MAX);
const limit = z.number().int().min(1).max(1000).optional();
const marker = z.string().min(1).max(1024).regex(/^[\u0020-\u00FF]*$/).optional();
const grantTokens = z.array(z.string().min(1).max(8192)).max(10).optional();
/**
 * EncryptionContext: kept exactly as sent, `__proto__` included — z.record rebuilds the object by
 * assignment and would drop that key, binding a different context than the caller named.
 */
const encryptionContext = z
  .custom<Record<string, string>>(isEncryptionContext, {
    message: `must be an object of at most ${MAX_CONTEXT_PAIRS} strings (keys of 1 to 8192 characters, values of at most 8192)`,
  })
  .transform((v) => copyStringMap(v))
  .optional();

function isEncryptionContext(v: unknown): v is Record<string, string> {
  return (
    v !== null &&
    typeof v === 'object' &&
    !Array.isArray(v) &&
    Object.keys(v).length <= MAX_CONTEXT_PAIRS &&
    Object.entries(v).every(([k, x]) => k.length >= 1 && k.length <= 8192 && typeof x === 'string' && x.length <= 8192)
  );
}
const tag = z.looseObject({ TagKey: z.string().min(1).max(128), TagValue: z.string().max(256) });
const aliasName = z.string().min(1).max(256);
const dryRun = z.boolean().optional();
const encryptionAlgorithm = z.string().optional();

export const awsSchemas = {
  CreateKey: z.looseObject({
    Description: z.string().max(8192).optional(),
    KeySpec: z.string().optional(),
    CustomerMasterKeySpec: z.string().optional(),
    KeyUsage: z.string().optional(),
    Origin: z.string().optional(),
    Tags: z.array(tag).max(50).optional(),
    Policy: z.string().min(1).max(131072).optional(),
    BypassPolicyLockoutSafetyCheck: z.boolean().optional(),
    MultiRegion: z.boolean().optional(),
    CustomKeyStoreId: z.string().optional(),
    XksKeyId: z.string().optional(),
  }),
  DescribeKey: z.looseObject({ KeyId: keyId, GrantTokens: grantTokens }),
  ListKeys: z.looseObject({ Limit: limit, Marker: marker }),
  CreateAlias: z.looseObject({ AliasName: aliasName, TargetKeyId: keyId }),
  UpdateAlias: z.looseObject({ AliasName: aliasName, TargetKeyId: keyId }),
  DeleteAlias: z.looseObject({ AliasName: aliasName }),
  ListAliases: z.looseObject({ KeyId: keyId.optional(), Limit: limit, Marker: marker }),
  Encrypt: z.looseObject({
    KeyId: keyId,
    Plaintext: blob(1, 4096),
    EncryptionContext: encryptionContext,
    GrantTokens: grantTokens,
    EncryptionAlgorithm: encryptionAlgorithm,
    DryRun: dryRun,
  }),
  Decrypt: z.looseObject({
    CiphertextBlob: blob(1, 6144),
    KeyId: keyId.optional(),
    EncryptionContext: encryptionContext,
    GrantTokens: grantTokens,
    EncryptionAlgorithm: encryptionAlgorithm,
    Recipient: z.unknown().optional(),
    DryRun: dryRun,
  }),
  ReEncrypt: z.looseObject({
    CiphertextBlob: blob(1, 6144),
    SourceKeyId: keyId.optional(),
    SourceEncryptionContext: encryptionContext,
    SourceEncryptionAlgorithm: encryptionAlgorithm,
    DestinationKeyId: keyId,
    DestinationEncryptionContext: encryptionContext,
    DestinationEncryptionAlgorithm: encryptionAlgorithm,
    GrantTokens: grantTokens,
    DryRun: dryRun,
  }),
  GenerateDataKey: z.looseObject({
    KeyId: keyId,
    KeySpec: z.enum(['AES_256', 'AES_128']).optional(),
    NumberOfBytes: z.number().int().min(1).max(1024).optional(),
    EncryptionContext: encryptionContext,
    GrantTokens: grantTokens,
    Recipient: z.unknown().optional(),
    DryRun: dryRun,
  }),
  GenerateDataKeyWithoutPlaintext: z.looseObject({
    KeyId: keyId,
    KeySpec: z.enum(['AES_256', 'AES_128']).optional(),
    NumberOfBytes: z.number().int().min(1).max(1024).optional(),
    EncryptionContext: encryptionContext,
    GrantTokens: grantTokens,
    DryRun: dryRun,
  }),
  GenerateRandom: z.looseObject({
    NumberOfBytes: z.number().int().min(1).max(1024).optional(),
    CustomKeyStoreId: z.string().optional(),
    Recipient: z.unknown().optional(),
  }),
  Sign: z.looseObject({
    KeyId: keyId,
    Message: blob(1, 4096),
    MessageType: z.enum(['RAW', 'DIGEST', 'EXTERNAL_MU']).optional(),
    SigningAlgorithm: z.string(),
    GrantTokens: grantTokens,
    DryRun: dryRun,
  }),
  Verify: z.looseObject({
    KeyId: keyId,
    Message: blob(1, 4096),
    MessageType: z.enum(['RAW', 'DIGEST', 'EXTERNAL_MU']).optional(),
    Signature: blob(1, 6144),
    SigningAlgorithm: z.string(),
    GrantTokens: grantTokens,
    DryRun: dryRun,
  }),
  GetPublicKey: z.looseObject({ KeyId: keyId, GrantTokens: grantTokens }),
  GenerateMac: z.looseObject({ KeyId: keyId, Message: blob(1, 4096), MacAlgorithm: z.string(), GrantTokens: grantTokens, DryRun: dryRun }),
  VerifyMac: z.looseObject({
    KeyId: keyId,
    Message: blob(1, 4096),
    MacAlgorithm: z.string(),
    Mac: blob(1, 6144),
    GrantTokens: grantTokens,
    DryRun: dryRun,
  }),
  EnableKey: z.looseObject({ KeyId: keyId }),
  DisableKey: z.looseObject({ KeyId: keyId }),
  ScheduleKeyDeletion: z.looseObject({ KeyId: keyId, PendingWindowInDays: z.number().int().min(7).max(30).optional() }),
  CancelKeyDeletion: z.looseObject({ KeyId: keyId }),
  EnableKeyRotation: z.looseObject({ KeyId: keyId, RotationPeriodInDays: z.number().int().min(90).max(2560).optional() }),
  DisableKeyRotation: z.looseObject({ KeyId: keyId }),
  GetKeyRotationStatus: z.looseObject({ KeyId: keyId }),
  RotateKeyOnDemand: z.looseObject({ KeyId: keyId }),
  ListKeyRotations: z.looseObject({ KeyId: keyId, Limit: limit, Marker: marker, IncludeKeyMaterial: z.enum(['ALL_KEY_MATERIAL', 'ROTATIONS_ONLY']).optional() }),
  TagResource: z.looseObject({ KeyId: keyId, Tags: z.array(tag).max(50) }),
  UntagResource: z.looseObject({ KeyId: keyId, TagKeys: z.array(z.string().min(1).max(128)).max(50) }),
  ListResourceTags: z.looseObject({ KeyId: keyId, Limit: limit, Marker: marker }),
  GetParametersForImport: z.looseObject({
    KeyId: keyId,
    WrappingAlgorithm: z.string(),
    WrappingKeySpec: z.string(),
  }),
  ImportKeyMaterial: z.looseObject({
    KeyId: keyId,
    ImportToken: blob(1, 6144),
    EncryptedKeyMaterial: blob(1, 6144),
    ValidTo: z.number().optional(),
    ExpirationModel: z.enum(['KEY_MATERIAL_EXPIRES', 'KEY_MATERIAL_DOES_NOT_EXPIRE']).optional(),
    ImportType: z.string().optional(),
    KeyMaterialDescription: z.string().optional(),
    KeyMaterialId: z.string().optional(),
  }),
} as const;

export type AwsOperation = keyof typeof awsSchemas;
export const AWS_OPERATIONS = new Set(Object.keys(awsSchemas)) as ReadonlySet<string>;
export type AwsRequest<O extends AwsOperation> = z.output<(typeof awsSchemas)[O]>;

/** The body as JSON; anything but an object is SerializationException (AWS's name for unparseable input). */
export function parseJson(raw: Buffer): Record<string, unknown> {
  // An empty body is an empty request (the AWS CLI sends "{}", some clients nothing).
  if (!raw.length) return {};
  let value: unknown;
  try {
    value = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new AwsError('SerializationException', 'request body is not valid JSON');
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new AwsError('SerializationException', 'request body must be a JSON object');
  return value as Record<string, unknown>;
}

/** A member of a plain request: its checked value as the schema outputs it, or undefined when the schema must decide. */
type PlainMember = (v: unknown) => unknown;

const plainKeyId: PlainMember = (v) => (typeof v === 'string' && v.length >= 1 && v.length <= KEY_ID_MAX ? v : undefined);
const plainString: PlainMember = (v) => (typeof v === 'string' ? v : undefined);
const plainContext: PlainMember = (v) => (isEncryptionContext(v) ? copyStringMap(v) : undefined);
const plainBlob =
  (min: number, max: number): PlainMember =>
  (v) => {
    if (typeof v !== 'string' || !isBase64(v)) return undefined;
    const b = Buffer.from(v, 'base64');
    return b.length >= min && b.length <= max ? b : undefined;
  };

/**
 * The hot operations' usual members, checked as their schemas check them (same bounds, same
 * output) without zod's per-request machinery, which costs more than the rest of an Encrypt's
 * parsing. A request with any other member, or any value these do not accept, goes through the
 * schema, which decides and words the error: this only ever takes a shortcut to the same answer.
 */
const PLAIN: Partial<Record<AwsOperation, Record<string, PlainMember>>> = {
  Encrypt: { KeyId: plainKeyId, Plaintext: plainBlob(1, 4096), EncryptionContext: plainContext, EncryptionAlgorithm: plainString },
  Decrypt: { CiphertextBlob: plainBlob(1, 6144), KeyId: plainKeyId, EncryptionContext: plainContext, EncryptionAlgorithm: plainString },
  GenerateDataKey: {
    KeyId: plainKeyId,
    KeySpec: (v) => (v === 'AES_256' || v === 'AES_128' ? v : undefined),
    NumberOfBytes: (v) => (typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 1024 ? v : undefined),
    EncryptionContext: plainContext,
  },
};
/** Members a plain request of these operations must have (the rest are optional). */
const PLAIN_REQUIRED: Partial<Record<AwsOperation, string[]>> = { Encrypt: ['KeyId', 'Plaintext'], Decrypt: ['CiphertextBlob'], GenerateDataKey: ['KeyId'] };

/** `value` as the schema of `op` outputs it, when it is a plain request (see PLAIN); else undefined. */
export function plainRequest<O extends AwsOperation>(op: O, value: Record<string, unknown>): AwsRequest<O> | undefined {
  const members = PLAIN[op];
  if (!members) return undefined;
  for (const name of PLAIN_REQUIRED[op]!) if (!Object.hasOwn(value, name)) return undefined;
  const out: Record<string, unknown> = {};
  for (const name of Object.keys(value)) {
    const check = Object.hasOwn(members, name) ? members[name] : undefined;
    const checked = check?.(value[name]);
    if (checked === undefined) return undefined;
    out[name] = checked;
  }
  return out as AwsRequest<O>;
}

/** Validates a parsed body for `op`; the ValidationException names the first offending member. */
export function validateRequest<O extends AwsOperation>(op: O, value: Record<string, unknown>): AwsRequest<O> {
  const plain = plainRequest(op, value);
  if (plain) return plain;
  const r = awsSchemas[op].safeParse(value);
  if (r.success) return r.data as AwsRequest<O>;
  const issue = r.error.issues[0]!;
  const path = issue.path.map(String).join('.');
  // The member as sent: zod's issues carry no input, so a wrong type (Limit: "10") read as absent.
  let sent: unknown = value;
  for (const key of issue.path) sent = sent !== null && typeof sent === 'object' ? (sent as Record<PropertyKey, unknown>)[key] : undefined;
  const missing = issue.code === 'invalid_type' && (sent === undefined || sent === null);
  throw awsValidation(`1 validation error detected: Value at '${path || 'body'}' failed to satisfy constraint: ${missing ? 'Member must not be null' : issue.message}`);
}
