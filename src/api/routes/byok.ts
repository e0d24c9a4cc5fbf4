import { Router } from 'express';
import { kmsRoute } from '../handler.js';
import { schemas } from '../schemas.js';
import type { Services } from '../services.js';
import { parse } from '../validate.js';
import { keyToWire } from '../wire.js';

const REGIONAL = { regional: true } as const;

/**
 * BYOK import and break-glass export. Audit details name the algorithms only: import tokens
 * and key material never reach an audit record.
 */
export function byokRoutes(s: Services): Router {
  const r = Router();

  r.get(
    '/v1/kms/:region/wrapping-key',
    kmsRoute(s, 'kms.wrapping-key', REGIONAL, async (_req, ctx) => {
      // Its first use generates the region's RSA-4096 pair, so it needs the import permission.
      ctx.require('import');
      return { body: await s.byok.wrappingKey(ctx.scope.region) };
    }),
  );

  r.post(
    '/v1/kms/:region/keys/import-parameters',
    kmsRoute(s, 'kms.import.parameters', REGIONAL, async (req, ctx) => {
      ctx.require('import');
      const body = parse(schemas.importParameters, req.body);
      const p = await s.byok.importParameters(ctx.scope, body.keyType, body.wrappingAlgorithm);
      ctx.auditDetail = { keyType: body.keyType, wrappingAlgorithm: body.wrappingAlgorithm, expiresAt: p.expiresAt };
      return { body: p };
    }),
  );

  r.post(
    '/v1/kms/:region/keys/import',
    kmsRoute(s, 'kms.import', REGIONAL, async (req, ctx) => {
      ctx.require('create');
      ctx.require('import');
      const body = parse(schemas.importKey, req.body);
      const key = await s.byok.importKey(ctx.scope, body);
      ctx.auditKey = key.identity;
      ctx.auditVersion = '1';
      return { status: 201, body: keyToWire(key) };
    }),
  );

  r.post(
    '/v1/kms/:region/keys/:id/import-version',
    kmsRoute(s, 'kms.import.version', REGIONAL, async (req, ctx) => {
      const key = ctx.key(String(req.params.id), 'import');
      const body = parse(schemas.importVersion, req.body);
      const updated = await s.byok.importVersion(ctx.scope, key, body);
      ctx.auditVersion = String(updated.latestVersion);
      return { body: keyToWire(updated) };
    }),
  );

  r.post(
    '/v1/kms/:region/keys/:id/export',
    kmsRoute(s, 'kms.export', REGIONAL, async (req, ctx) => {
      const key = ctx.key(String(req.params.id), 'export');
      const body = parse(schemas.export, req.body);
      if (body.keyVersion !== undefined) ctx.auditVersion = String(body.keyVersion);
      const out = await s.byok.export(key, body);
      ctx.auditVersion = out.keyVersion;
      ctx.auditDetail = { wrappingAlgorithm: out.wrappingAlgorithm };
      return { body: out };
    }),
  );

  return r;
}
