import { Router } from 'express';
import type { z } from 'zod';
import type { CryptoErrorItem } from '../../crypto/crypto-service.js';
import { namedVersion } from '../../crypto/versioned.js';
import { KmsError, validation } from '../../errors.js';
import { expressRoute, operation, type Operation, type RouteBody } from '../handler.js';
import type { RequestContext } from '../context.js';
import { itemSchemas, querySchemas, schemas } from '../schemas.js';
import type { Services } from '../services.js';
import { parse, parseQuery } from '../validate.js';

const REGIONAL = { regional: true } as const;
const EMPTY = Buffer.alloc(0);
const b = (s: string | undefined) => (s ? Buffer.from(s, 'base64') : EMPTY);

function checkBatch(s: Services, batch: unknown[] | undefined, single: unknown, singleName: string): void {
  if (batch && single !== undefined) throw validation(`batch: send either ${singleName} or batch, not both`);
  if (!batch && single === undefined) throw validation(`${singleName}: is required`);
  if (batch && batch.length > s.config.limits.maxBatchItems)
    throw validation(`batch: at most ${s.config.limits.maxBatchItems} items (limits.maxBatchItems)`);
}

function versionOf(ctx: RequestContext, v: string | number | undefined) {
  if (v !== undefined) ctx.auditVersion = String(v);
}

/** Most failed items a batch's audit record lists (the count is always complete). */
const AUDITED_BATCH_FAILURES = 16;

/**
 * Validates each batch item on its own: a bad one becomes `{error}` in its slot (API.md, the
 * crypto table's batch row) and the others are still served.
 */
function batchItems<S extends z.ZodType, T>(schema: S, items: unknown[], prepare: (item: z.output<S>) => T): (T | CryptoErrorItem)[] {
  return items.map((raw, i) => {
    try {
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw validation(`batch[${i}]: expected a JSON object`);
      return prepare(parse(schema, raw, 'body', `batch[${i}]`));
    } catch (e) {
      if (!(e instanceof KmsError)) throw e;
      return { error: { code: e.code, message: e.message } };
    }
  });
}

/**
 * The audit detail of a batch: its size and the items that failed, each with the version its
 * input named (so a failed batch decrypt is traceable to a version like a single one).
 */
function batchDetail(results: object[], versionOfItem: (i: number) => string | undefined) {
  const failed: { index: number; code: string; keyVersion: string | null }[] = [];
  let failedCount = 0;
  results.forEach((r, index) => {
    if (!('error' in r)) return;
    failedCount++;
    if (failed.length < AUDITED_BATCH_FAILURES)
      failed.push({ index, code: (r as CryptoErrorItem).error.code, keyVersion: versionOfItem(index) ?? null });
  });
  return failedCount ? { batch: results.length, failed, failedCount } : { batch: results.length };
}

/** The one version every item of a batch names, if they agree (the batch record's keyVersion). */
function commonVersion(versions: (string | undefined)[]): string | undefined {
  const first = versions[0];
  return first !== undefined && versions.every((v) => v === first) ? first : undefined;
}

/** One cryptographic operation: /v1/kms/{region}/keys/{id}/{path}. */
export interface CryptoOperation {
  method: 'post' | 'get';
  path: string;
  run: Operation;
}

/** The route pattern of a cryptographic operation (also its metrics label). */
export const cryptoRoutePath = (path: string) => `/v1/kms/:region/keys/:id/${path}`;

/** Serves the cryptographic operations through Express (the fast path serves most POSTs before it). */
export function cryptoRoutes(ops: CryptoOperation[]): Router {
  const r = Router();
  for (const o of ops) r[o.method](cryptoRoutePath(o.path), expressRoute(o.run));
  return r;
}

/** Cryptographic operations on a key, framework-independent. */
export function cryptoOperations(s: Services): CryptoOperation[] {
  const ops: CryptoOperation[] = [];
  const op = (name: string, path: string, body: RouteBody, method: 'post' | 'get' = 'post') =>
    ops.push({ method, path, run: operation(s, `kms.${name}`, REGIONAL, body) });

  op('encrypt', 'encrypt', async (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.encrypt, req.body);
    checkBatch(s, body.batch, body.plaintext, 'plaintext');
    if (body.batch) {
      if (body.keyVersion !== undefined || body.aad !== undefined) throw validation('batch: put aad inside each item; keyVersion is not allowed with batch');
      const items = batchItems(itemSchemas.encrypt, body.batch, (i) => ({ plaintext: b(i.plaintext), aad: b(i.aad) }));
      const results = await s.crypto.encryptBatch(key, items);
      versionOf(ctx, commonVersion(results.map((r) => ('keyVersion' in r ? r.keyVersion : undefined))));
      ctx.auditDetail = batchDetail(results, () => undefined);
      return { body: { batch: results } };
    }
    versionOf(ctx, body.keyVersion);
    const out = await s.crypto.encryptInBurst(key, b(body.plaintext), b(body.aad), body.keyVersion);
    versionOf(ctx, out.keyVersion);
    return { body: out };
  });

  op('decrypt', 'decrypt', async (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.decrypt, req.body);
    checkBatch(s, body.batch, body.ciphertext, 'ciphertext');
    if (body.batch) {
      if (body.aad !== undefined) throw validation('batch: put aad inside each item');
      const items = batchItems(itemSchemas.decrypt, body.batch, (i) => ({ ciphertext: i.ciphertext, aad: b(i.aad) }));
      const named = body.batch.map((i) => namedVersion((i as { ciphertext?: unknown } | null)?.ciphertext));
      const results = await s.crypto.decryptBatch(key, items);
      versionOf(ctx, commonVersion(named));
      ctx.auditDetail = batchDetail(results, (i) => named[i]);
      return { body: { batch: results } };
    }
    // Named before the attempt, so a failed decrypt is audited with the version its input named.
    versionOf(ctx, namedVersion(body.ciphertext));
    const out = await s.crypto.decryptInBurst(key, body.ciphertext!, b(body.aad));
    versionOf(ctx, out.keyVersion);
    return { body: { plaintext: out.plaintext.toString('base64'), keyVersion: out.keyVersion } };
  });

  op('re-encrypt', 're-encrypt', (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.reEncrypt, req.body);
    const destination = body.destinationKey ? ctx.key(body.destinationKey, 'crypto') : key;
    ctx.auditKey = key.identity;
    ctx.auditDetail = { destinationKey: destination.identity };
    versionOf(ctx, namedVersion(body.ciphertext));
    const out = s.crypto.reEncrypt(key, body.ciphertext, b(body.aad), destination);
    versionOf(ctx, out.sourceKeyVersion);
    return { body: out };
  });

  op('generate-data-key', 'generate-data-key', (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.generateDataKey, req.body);
    const out = s.crypto.generateDataKey(key, body.keySpec === 'AES_128' ? 16 : 32, body.includePlaintext ?? true, b(body.aad));
    versionOf(ctx, out.keyVersion);
    return { body: out };
  });

  op('sign', 'sign', async (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.sign, req.body);
    versionOf(ctx, body.keyVersion);
    const out = await s.crypto.sign(key, { ...body, input: b(body.input) });
    versionOf(ctx, out.keyVersion);
    return { body: out };
  });

  op('verify', 'verify', async (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.verify, req.body);
    versionOf(ctx, namedVersion(body.signature));
    return { body: await s.crypto.verify(key, { ...body, input: b(body.input) }) };
  });

  op('hmac', 'hmac', (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.hmac, req.body);
    versionOf(ctx, body.keyVersion);
    const out = s.crypto.hmac(key, b(body.input), body.keyVersion, body.algorithm);
    versionOf(ctx, out.keyVersion);
    return { body: out };
  });

  op('verify-hmac', 'verify-hmac', (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.verifyHmac, req.body);
    versionOf(ctx, namedVersion(body.hmac));
    const out = s.crypto.verifyHmac(key, b(body.input), body.hmac, body.hashAlgorithm);
    versionOf(ctx, out.keyVersion);
    return { body: out };
  });

  op(
    'public-key',
    'public-key',
    (req, ctx) => {
      const key = ctx.key(String(req.params.id), 'read');
      const q = parseQuery(querySchemas.publicKey, req.query);
      return { body: s.crypto.publicKey(key, q.version) };
    },
    'get',
  );

  op('decrypt-asymmetric', 'decrypt-asymmetric', async (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.decryptAsymmetric, req.body);
    versionOf(ctx, body.keyVersion);
    const out = await s.crypto.decryptAsymmetric(key, b(body.ciphertext), body.keyVersion, body.hashFunction);
    versionOf(ctx, out.keyVersion);
    return { body: { plaintext: out.plaintext } };
  });

  return ops;
}
