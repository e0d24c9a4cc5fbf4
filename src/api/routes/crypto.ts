import { Router } from 'express';
import { validation } from '../../errors.js';
import { expressRoute, operation, type Operation, type RouteBody } from '../handler.js';
import type { RequestContext } from '../context.js';
import { querySchemas, schemas } from '../schemas.js';
import type { Services } from '../services.js';
import { parse } from '../validate.js';

const REGIONAL = { regional: true } as const;
const EMPTY = Buffer.alloc(0);
const b = (s: string | undefined) => (s ? Buffer.from(s, 'base64') : EMPTY);

function checkBatch(s: Services, batch: unknown[] | undefined, single: unknown, singleName: string): void {
  if (batch && single !== undefined) throw validation(`batch: send either ${singleName} or batch, not both`);
  if (!batch && single === undefined) throw validation(`${singleName}: is required`);
  if (batch && batch.length > s.config.limits.maxBatchItems)
    throw validation(`batch: at most ${s.config.limits.maxBatchItems} items (limits.maxBatchItems)`);
}

function versionOf(ctx: RequestContext, v: string) {
  ctx.auditVersion = v;
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
      const items = body.batch.map((i) => ({ plaintext: b(i.plaintext), aad: b(i.aad) }));
      ctx.auditDetail = { batch: items.length };
      return { body: { batch: await s.crypto.encryptBatch(key, items) } };
    }
    const out = s.crypto.encrypt(key, b(body.plaintext), b(body.aad), body.keyVersion);
    versionOf(ctx, out.keyVersion);
    return { body: out };
  });

  op('decrypt', 'decrypt', async (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.decrypt, req.body);
    checkBatch(s, body.batch, body.ciphertext, 'ciphertext');
    if (body.batch) {
      if (body.aad !== undefined) throw validation('batch: put aad inside each item');
      ctx.auditDetail = { batch: body.batch.length };
      return { body: { batch: await s.crypto.decryptBatch(key, body.batch.map((i) => ({ ciphertext: i.ciphertext, aad: b(i.aad) }))) } };
    }
    const out = s.crypto.decrypt(key, body.ciphertext!, b(body.aad));
    versionOf(ctx, out.keyVersion);
    return { body: { plaintext: out.plaintext.toString('base64'), keyVersion: out.keyVersion } };
  });

  op('re-encrypt', 're-encrypt', (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.reEncrypt, req.body);
    const destination = body.destinationKey ? ctx.key(body.destinationKey, 'crypto') : key;
    ctx.auditKey = key.identity;
    ctx.auditDetail = { destinationKey: destination.identity };
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
    const out = await s.crypto.sign(key, { ...body, input: b(body.input) });
    versionOf(ctx, out.keyVersion);
    return { body: out };
  });

  op('verify', 'verify', async (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.verify, req.body);
    return { body: await s.crypto.verify(key, { ...body, input: b(body.input) }) };
  });

  op('hmac', 'hmac', (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.hmac, req.body);
    const out = s.crypto.hmac(key, b(body.input), body.keyVersion, body.algorithm);
    versionOf(ctx, out.keyVersion);
    return { body: out };
  });

  op('verify-hmac', 'verify-hmac', (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.verifyHmac, req.body);
    const out = s.crypto.verifyHmac(key, b(body.input), body.hmac, body.hashAlgorithm);
    versionOf(ctx, out.keyVersion);
    return { body: out };
  });

  op(
    'public-key',
    'public-key',
    (req, ctx) => {
      const key = ctx.key(String(req.params.id), 'read');
      const q = parse(querySchemas.publicKey, Object.fromEntries(Object.entries(req.query).filter(([, v]) => typeof v === 'string')), 'query');
      return { body: s.crypto.publicKey(key, q.version) };
    },
    'get',
  );

  op('decrypt-asymmetric', 'decrypt-asymmetric', async (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'crypto');
    const body = parse(schemas.decryptAsymmetric, req.body);
    const out = await s.crypto.decryptAsymmetric(key, b(body.ciphertext), body.keyVersion, body.hashFunction);
    versionOf(ctx, out.keyVersion);
    return { body: { plaintext: out.plaintext } };
  });

  return ops;
}
