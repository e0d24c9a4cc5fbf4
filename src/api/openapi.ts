import { z } from 'zod';
import { schemas } from './schemas.js';

const PATHS: [string, string, keyof typeof schemas | null, string][] = [
  ['post', '/v1/kms/{region}/keys', 'createKey', 'Create a key (or import one with importKeyMaterial)'],
  ['get', '/v1/kms/{region}/keys', null, 'List keys (JSON array)'],
  ['get', '/v1/kms/{region}/keys/{id}', null, 'Get a key by identity or slug'],
  ['patch', '/v1/kms/{region}/keys/{id}', 'patchKey', 'Set minDecryptionVersion'],
  ['post', '/v1/kms/{region}/keys/{id}/rotate', null, 'Rotate now'],
  ['patch', '/v1/kms/{region}/keys/{id}/rotation', 'updateRotation', 'Change the rotation policy (absent keyRotationEnabled = false)'],
  ['post', '/v1/kms/{region}/keys/{id}/disable', null, 'Disable'],
  ['post', '/v1/kms/{region}/keys/{id}/enable', null, 'Enable'],
  ['delete', '/v1/kms/{region}/keys/{id}', null, 'Schedule deletion (query pendingWindowInDays 7-30)'],
  ['delete', '/v1/kms/{region}/keys/{id}/cancel-deletion', null, 'Cancel a scheduled deletion'],
  ['post', '/v1/kms/{region}/keys/{id}/encrypt', 'encrypt', 'Encrypt (or batch)'],
  ['post', '/v1/kms/{region}/keys/{id}/decrypt', 'decrypt', 'Decrypt (or batch)'],
  ['post', '/v1/kms/{region}/keys/{id}/re-encrypt', 'reEncrypt', 'Re-encrypt to the latest version or another key'],
  ['post', '/v1/kms/{region}/keys/{id}/generate-data-key', 'generateDataKey', 'Data key for envelope encryption'],
  ['post', '/v1/kms/{region}/keys/{id}/sign', 'sign', 'Sign'],
  ['post', '/v1/kms/{region}/keys/{id}/verify', 'verify', 'Verify a signature'],
  ['post', '/v1/kms/{region}/keys/{id}/hmac', 'hmac', 'Compute an HMAC'],
  ['post', '/v1/kms/{region}/keys/{id}/verify-hmac', 'verifyHmac', 'Verify an HMAC'],
  ['get', '/v1/kms/{region}/keys/{id}/public-key', null, 'Public keys (SPKI PEM) by version'],
  ['post', '/v1/kms/{region}/keys/{id}/decrypt-asymmetric', 'decryptAsymmetric', 'RSA-OAEP decryption in the token'],
  ['post', '/v1/kms/{region}/keys/{id}/export', 'export', 'Break-glass export (admin, exportAllowed keys)'],
  ['get', '/v1/kms/{region}/wrapping-key', null, 'Regional BYOK wrapping key'],
  ['post', '/v1/kms/{region}/keys/import-parameters', 'importParameters', 'Single-use import token'],
  ['post', '/v1/kms/{region}/keys/import', 'importKey', 'Import a key with an import token'],
  ['post', '/v1/kms/{region}/keys/{id}/import-version', 'importVersion', 'Import a new version'],
  ['get', '/v1/kms/{region}/audit', null, 'Audit events'],
  ['get', '/v1/kms/audit/verify', null, 'Audit chain integrity'],
  ['get', '/v1/kms/summary', null, 'Per-region key counts'],
  ['post', '/v1/testing/clock', 'advanceClock', 'Advance the testing clock (testing.clockControl only)'],
];

const ERROR = {
  type: 'object',
  required: ['code', 'message', 'requestId'],
  properties: { code: { type: 'string' }, message: { type: 'string' }, requestId: { type: 'string' } },
};

/** Routes that may generate a key pair in the token (fair queue, 429 TooManyRequests). */
const KEY_PAIR_WORK = new Set(['/v1/kms/{region}/keys', '/v1/kms/{region}/keys/{id}/rotate', '/v1/kms/{region}/keys/import-parameters']);

/** OpenAPI 3.1 generated from the same zod schemas that validate requests. */
export function openApiDocument(version: string) {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const [method, path, schema, summary] of PATHS) {
    const op: Record<string, unknown> = {
      summary,
      security: [{ bearer: [] }],
      parameters: [
        { name: 'X-Organisation-Identity', in: 'header', required: !path.startsWith('/v1/testing'), schema: { type: 'string' } },
        { name: 'X-Project-Identity', in: 'header', required: false, schema: { type: 'string' } },
        ...[...path.matchAll(/\{(\w+)\}/g)].map((m) => ({ name: m[1], in: 'path', required: true, schema: { type: 'string' } })),
      ],
      responses: {
        '200': { description: 'OK', content: { 'application/json': {} } },
        default: { description: 'Error', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
      },
    };
    if (method === 'post' && KEY_PAIR_WORK.has(path))
      (op.responses as Record<string, unknown>)['429'] = {
        description: 'TooManyRequests: the organisation is over its share of key-pair generation, or holds limits.maxOpenImportTokens import tokens',
        headers: { 'Retry-After': { description: 'seconds', schema: { type: 'integer', minimum: 1 } } },
        content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
      };
    if (schema)
      op.requestBody = {
        required: !['createKey'].includes(schema) ? false : true,
        content: { 'application/json': { schema: z.toJSONSchema(schemas[schema], { io: 'input', unrepresentable: 'any' }) } },
      };
    (paths[path] ??= {})[method] = op;
  }
  return {
    openapi: '3.1.0',
    info: { title: 'kmsd', version, description: 'HSM-backed KMS daemon; Thalassa Cloud KMS wire-compatible.' },
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } }, schemas: { Error: ERROR } },
    paths,
  };
}
