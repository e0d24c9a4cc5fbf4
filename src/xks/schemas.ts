import { z } from 'zod';
import { xksValidation } from './errors.js';
import type { XksOperation } from './routes.js';

/**
 * Request bodies of the four operations (spec "API operations"). Objects are loose: KMS may
 * add requestMetadata fields over time (Appendix B) and the proxy must not reject them;
 * kmsRequestId and kmsOperation are opaque strings, never checked for structure.
 */
const optional = z.string().optional();
const healthMetadata = z.looseObject({
  kmsRequestId: z.string(),
  kmsOperation: z.string(),
  awsPrincipalArn: optional,
  kmsKeyArn: optional,
  awsSourceVpc: optional,
  awsSourceVpce: optional,
  kmsViaService: optional,
});
const keyMetadata = healthMetadata.extend({ awsPrincipalArn: z.string() });
const cryptoMetadata = keyMetadata.extend({ kmsKeyArn: z.string() });

export const xksSchemas = {
  health: z.looseObject({ requestMetadata: healthMetadata }),
  metadata: z.looseObject({ requestMetadata: keyMetadata }),
  encrypt: z.looseObject({
    requestMetadata: cryptoMetadata,
    plaintext: z.string(),
    encryptionAlgorithm: z.literal('AES_GCM'),
    additionalAuthenticatedData: optional,
    ciphertextDataIntegrityValueAlgorithm: z.literal('SHA_256').optional(),
  }),
  // Missing or malformed ciphertext parts are InvalidCiphertextException (spec error table), so
  // they are checked by the operation, not here.
  decrypt: z.looseObject({
    requestMetadata: cryptoMetadata,
    encryptionAlgorithm: z.literal('AES_GCM'),
    ciphertext: z.unknown().optional(),
    ciphertextMetadata: z.unknown().optional(),
    initializationVector: z.unknown().optional(),
    authenticationTag: z.unknown().optional(),
    additionalAuthenticatedData: z.unknown().optional(),
  }),
} as const satisfies Record<XksOperation, z.ZodType>;

export type XksRequestMetadata = z.infer<typeof healthMetadata>;

/** The body as JSON; anything but an object is ValidationException. */
export function parseJson(raw: Buffer): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(raw.toString('utf8'));
  } catch {
    throw xksValidation('request body is not valid JSON');
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw xksValidation('request body must be a JSON object');
  return value as Record<string, unknown>;
}

/** Validates a parsed body for `op`; the ValidationException names the first offending field. */
export function validateBody<O extends XksOperation>(op: O, value: Record<string, unknown>): z.output<(typeof xksSchemas)[O]> {
  const r = xksSchemas[op].safeParse(value);
  if (r.success) return r.data as z.output<(typeof xksSchemas)[O]>;
  const issue = r.error.issues[0]!;
  const path = issue.path.map(String).join('.');
  const missing = issue.code === 'invalid_type' && issue.message.includes('received undefined');
  throw xksValidation(`${path || 'body'}: ${missing ? 'is required' : issue.message}`);
}

/**
 * The requestMetadata fields the audit record carries, each cut to its own bound (a CloudTrail
 * request id is a UUID, an operation name a word; ARNs may be 2048 characters by the spec but
 * the record as a whole must stay under 2 KB), as printable ASCII.
 */
const AUDITED_FIELDS = { kmsRequestId: 128, awsPrincipalArn: 512, kmsOperation: 64, kmsKeyArn: 512 } as const;

/**
 * The requestMetadata fields the audit record carries, taken leniently (before validation)
 * so even a rejected request can be matched to its CloudTrail entry by kmsRequestId.
 */
export function auditedMetadata(body: Record<string, unknown> | undefined): Record<string, string> | undefined {
  const m = body?.requestMetadata;
  if (!m || typeof m !== 'object' || Array.isArray(m)) return undefined;
  const out: Record<string, string> = {};
  for (const [f, max] of Object.entries(AUDITED_FIELDS)) {
    const v = (m as Record<string, unknown>)[f];
    if (typeof v === 'string') out[f] = v.slice(0, max).replace(/[^\x20-\x7e]/g, '?');
  }
  return Object.keys(out).length ? out : undefined;
}
