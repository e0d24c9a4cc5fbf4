import { z } from 'zod';
import { copyStringMap } from '../string-map.js';
import { isBase64 } from '../crypto/versioned.js';
import { KEY_TYPE_NAMES } from '../keys/key-types.js';
import { MAX_PERIOD_DAYS, MIN_PERIOD_DAYS } from '../rotation/policy.js';

/**
 * Every request body of the HTTP API, in one module: these schemas validate requests and are
 * also what /openapi.json is generated from, so the document cannot drift from the code.
 * Field names and JSON types follow the Thalassa Go client (../shared/THALASSA-CLIENT.md).
 */
const b64 = z.string().refine(isBase64, { message: 'must be standard base64' });

/** Key names: no control characters (U+0000–U+001F, U+007F); they break logs, labels and terminals. */
// eslint-disable-next-line no-control-regex
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f]/;
/** A lone UTF-16 surrogate (JSON's "\ud800"): it cannot be stored or sent as UTF-8, and came back as U+FFFD. */
const LONE_SURROGATE = /\p{Surrogate}/u;
const wellFormed = { message: 'must be well-formed Unicode (no lone surrogate such as \\ud800)' };

const isStringMap = (v: unknown): v is Record<string, string> =>
  v !== null && typeof v === 'object' && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string');
/**
 * Labels and annotations: any keys, kept exactly as sent — `__proto__` and `constructor`
 * included. Not z.record, which rebuilds the object by assignment and so drops `__proto__`;
 * the copy has no prototype, so no key can collide with an inherited property.
 */
const stringMap = z
  .custom<Record<string, string>>(isStringMap, { message: 'must be an object whose values are strings' })
  .transform((v) => copyStringMap(v))
  .meta({ type: 'object', additionalProperties: { type: 'string' } });

/**
 * Labels and annotations are stored with the key and returned on every read: bounded (at most
 * MAX_MAP_ENTRIES entries, keys 1–MAX_MAP_KEY_CHARS characters, values up to `maxValue`).
 */
export const MAX_MAP_ENTRIES = 64;
export const MAX_MAP_KEY_CHARS = 128;
export const MAX_LABEL_VALUE_CHARS = 1024;
export const MAX_ANNOTATION_VALUE_CHARS = 4096;
const boundedMap = (maxValue: number) =>
  stringMap.superRefine((m, ctx) => {
    const entries = Object.entries(m);
    if (entries.length > MAX_MAP_ENTRIES) ctx.addIssue({ code: 'custom', message: `at most ${MAX_MAP_ENTRIES} entries` });
    for (const [k, v] of entries) {
      if (k.length < 1 || k.length > MAX_MAP_KEY_CHARS) ctx.addIssue({ code: 'custom', message: `keys are 1-${MAX_MAP_KEY_CHARS} characters` });
      else if (v.length > maxValue) ctx.addIssue({ code: 'custom', path: [k], message: `values are at most ${maxValue} characters` });
    }
  });
/** Key versions are strings on the wire; integers are accepted too. */
export const keyVersion = z
  .union([z.string().regex(/^[1-9][0-9]{0,8}$/, 'must be a positive integer'), z.number().int().min(1).max(999_999_999)])
  .transform(Number);
const period = z.number().int().min(MIN_PERIOD_DAYS).max(MAX_PERIOD_DAYS);
const hashAlgorithm = z.string().max(16);
const hashFunction = z.enum(['SHA1', 'SHA256', 'SHA384', 'SHA512']);

/**
 * Batch items are validated one by one by the route (itemSchemas), so a bad item becomes an
 * `{error}` in its slot instead of failing the batch; the envelope accepts any item and
 * documents the item schema.
 */
function batchItem(item: z.ZodType) {
  const { $schema: _drop, ...doc } = z.toJSONSchema(item, { io: 'input' }) as Record<string, unknown>;
  return z.unknown().meta(doc);
}

/** One item of an encrypt or decrypt batch. */
export const itemSchemas = {
  encrypt: z.strictObject({ plaintext: b64, aad: b64.optional() }),
  decrypt: z.strictObject({ ciphertext: z.string(), aad: b64.optional() }),
};

const createFields = {
  name: z
    .string()
    .min(1)
    .max(255)
    .refine((n) => !CONTROL_CHARACTERS.test(n), { message: 'must not contain control characters' })
    .refine((n) => !LONE_SURROGATE.test(n), wellFormed),
  keyType: z.enum(KEY_TYPE_NAMES),
  description: z
    .string()
    .max(1024)
    .refine((d) => !LONE_SURROGATE.test(d), wellFormed)
    .optional(),
  labels: boundedMap(MAX_LABEL_VALUE_CHARS).optional(),
  annotations: boundedMap(MAX_ANNOTATION_VALUE_CHARS).optional(),
  exportAllowed: z.boolean().optional(),
  keyRotationEnabled: z.boolean().optional(),
  rotationPeriodInDays: period.optional(),
  allowRotation: z.boolean().optional(),
};

export const schemas = {
  createKey: z.strictObject({ ...createFields, importKeyMaterial: b64.optional(), hashFunction: hashFunction.optional() }),
  updateRotation: z.strictObject({ keyRotationEnabled: z.boolean().optional(), rotationPeriodInDays: period.optional() }),
  patchKey: z.strictObject({ minDecryptionVersion: z.number().int().min(1) }),
  encrypt: z.strictObject({
    plaintext: b64.optional(),
    keyVersion: keyVersion.optional(),
    aad: b64.optional(),
    batch: z.array(batchItem(itemSchemas.encrypt)).optional(),
  }),
  decrypt: z.strictObject({
    ciphertext: z.string().optional(),
    aad: b64.optional(),
    batch: z.array(batchItem(itemSchemas.decrypt)).optional(),
  }),
  reEncrypt: z.strictObject({ ciphertext: z.string(), aad: b64.optional(), destinationKey: z.string().min(1).max(255).optional() }),
  generateDataKey: z.strictObject({
    keySpec: z.enum(['AES_256', 'AES_128']).optional(),
    includePlaintext: z.boolean().optional(),
    aad: b64.optional(),
  }),
  sign: z.strictObject({
    input: b64,
    keyVersion: keyVersion.optional(),
    hashAlgorithm: hashAlgorithm.optional(),
    prehashed: z.boolean().optional(),
    signatureAlgorithm: z.enum(['pss', 'pkcs1v15']).optional(),
    context: z.string().optional(),
  }),
  verify: z.strictObject({
    input: b64,
    signature: z.string(),
    hashAlgorithm: hashAlgorithm.optional(),
    prehashed: z.boolean().optional(),
    signatureAlgorithm: z.enum(['pss', 'pkcs1v15']).optional(),
    context: z.string().optional(),
  }),
  hmac: z.strictObject({ input: b64, keyVersion: keyVersion.optional(), algorithm: hashAlgorithm.optional() }),
  verifyHmac: z.strictObject({ input: b64, hmac: z.string(), hashAlgorithm: hashAlgorithm.optional() }),
  // Raw RSA-OAEP names no version, so the caller must.
  decryptAsymmetric: z.strictObject({ ciphertext: b64, keyVersion, hashFunction: hashFunction.optional() }),
  export: z.strictObject({
    keyVersion: keyVersion.optional(),
    wrappingPublicKeyPem: z.string().min(1).max(16384).optional(),
    hashFunction: hashFunction.optional(),
  }),
  importParameters: z.strictObject({
    keyType: z.enum(KEY_TYPE_NAMES),
    wrappingAlgorithm: z.enum(['RSA_OAEP_SHA1', 'RSA_OAEP_SHA256', 'RSA_AES_KEY_WRAP_SHA1', 'RSA_AES_KEY_WRAP_SHA256']),
  }),
  importKey: z.strictObject({ ...createFields, importToken: z.string().min(1).max(256), wrappedKeyMaterial: b64 }),
  importVersion: z.strictObject({ importToken: z.string().min(1).max(256), wrappedKeyMaterial: b64 }),
  advanceClock: z.strictObject({ advanceSeconds: z.number().min(0).max(100 * 365 * 86400) }),
  /** rotate, disable, enable, DELETE, cancel-deletion: no body, `{}` or `null`; a field is refused, never ignored. */
  noBody: z.strictObject({}),
} as const;

export const querySchemas = {
  listKeys: z.object({
    identity: z.string().optional(),
    name: z.string().optional(),
    slug: z.string().optional(),
    status: z.enum(['active', 'disabled', 'pending_deletion']).optional(),
    region: z.string().optional(),
  }),
  deleteKey: z.object({ pendingWindowInDays: z.coerce.number().int().min(7).max(30).optional() }),
  publicKey: z.object({ version: keyVersion.optional() }),
  audit: z.object({
    keyIdentity: z.string().optional(),
    action: z.string().optional(),
    since: z.iso.datetime({ offset: true }).optional(),
    limit: z.coerce.number().int().min(1).max(10000).optional(),
  }),
};

export type Schemas = typeof schemas;
export type Body<K extends keyof Schemas> = z.output<Schemas[K]>;

