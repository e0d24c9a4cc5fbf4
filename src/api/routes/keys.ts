import { Router } from 'express';
import { KmsError, validation } from '../../errors.js';
import { kmsRoute, type ApiRequest } from '../handler.js';
import { querySchemas, schemas } from '../schemas.js';
import type { Services } from '../services.js';
import { parse, parseQuery } from '../validate.js';
import { keyToWire } from '../wire.js';

const REGIONAL = { regional: true } as const;

const MATCH_LABEL = /^matchLabels\[([^[\]]+)\]$/;

/**
 * The label filter, read from the raw query string (not the extended query parser, which drops
 * keys such as `__proto__` and `constructor`): only `matchLabels[k]=v`, each k once; any other
 * shape of a matchLabels parameter is 400 ValidationError, never silently ignored.
 */
function labelFilter(req: ApiRequest): Map<string, string> | undefined {
  const url = req.originalUrl ?? '';
  const q = url.indexOf('?');
  if (q < 0) return undefined;
  const out = new Map<string, string>();
  for (const [k, v] of new URLSearchParams(url.slice(q + 1))) {
    if (!k.startsWith('matchLabels')) continue;
    const m = MATCH_LABEL.exec(k);
    if (!m) throw validation(`query: ${k.slice(0, 100)}: label filters are matchLabels[key]=value`);
    if (out.has(m[1]!)) throw validation(`query: matchLabels[${m[1]!.slice(0, 100)}] given more than once`);
    out.set(m[1]!, v);
  }
  return out.size ? out : undefined;
}

/** Key management: /v1/kms/{region}/keys… (Thalassa paths) and /v1/kms/summary. */
export function keyRoutes(s: Services): Router {
  const r = Router();

  r.get(
    '/v1/kms/summary',
    kmsRoute(s, 'kms.summary', { regional: false, allowDisabledOrg: true }, (_req, ctx) => {
      const enabled = s.config.organisations.find((o) => o.identity === ctx.organisation)?.kmsEnabled ?? false;
      if (!enabled) return { body: { featureEnabled: false, regions: [] } };
      const counts = s.keys.summary(ctx.organisation);
      const regions = [...s.regions.tokens.entries()].map(([name, t]) => {
        const c = counts.get(name) ?? { active: 0, disabled: 0, pending_deletion: 0 };
        return {
          identity: name,
          name,
          slug: name,
          kmsAvailable: t.available,
          totalKeys: c.active + c.disabled + c.pending_deletion,
          activeKeys: c.active,
          disabledKeys: c.disabled,
          pendingDeletionKeys: c.pending_deletion,
        };
      });
      return { body: { featureEnabled: true, regions } };
    }),
  );

  r.get(
    '/v1/kms/:region/keys',
    kmsRoute(s, 'kms.list', REGIONAL, (req, ctx) => {
      ctx.require('read');
      const q = parseQuery(querySchemas.listKeys, req.query);
      if (q.region && q.region !== ctx.region) return { body: [] };
      return { body: s.keys.list(ctx.scope, { ...q, labels: labelFilter(req) }).map(keyToWire) };
    }),
  );

  r.post(
    '/v1/kms/:region/keys',
    kmsRoute(s, 'kms.create', REGIONAL, async (req, ctx) => {
      ctx.require('create');
      const body = parse(schemas.createKey, req.body);
      let key;
      if (body.importKeyMaterial !== undefined) {
        ctx.require('import');
        key = await s.byok.createFromWrappingKey(ctx.scope, { ...body, importKeyMaterial: body.importKeyMaterial });
        ctx.auditDetail = { imported: true };
      } else {
        if (body.hashFunction !== undefined) throw new KmsError('ValidationError', 'hashFunction: only with importKeyMaterial');
        if (body.allowRotation !== undefined && !body.allowRotation)
          throw new KmsError('ValidationError', 'allowRotation: only meaningful with importKeyMaterial');
        key = await s.keys.create(ctx.scope, body);
      }
      ctx.auditKey = key.identity;
      ctx.auditVersion = '1';
      return { status: 201, body: keyToWire(key) };
    }),
  );

  r.get(
    '/v1/kms/:region/keys/:id',
    kmsRoute(s, 'kms.get', REGIONAL, (req, ctx) => ({ body: keyToWire(ctx.key(String(req.params.id), 'read')) })),
  );

  r.patch(
    '/v1/kms/:region/keys/:id',
    kmsRoute(s, 'kms.update', REGIONAL, async (req, ctx) => {
      const key = ctx.key(String(req.params.id), 'update');
      const body = parse(schemas.patchKey, req.body);
      return { body: keyToWire(await s.keys.setMinDecryptionVersion(key, body.minDecryptionVersion)) };
    }),
  );

  r.post(
    '/v1/kms/:region/keys/:id/rotate',
    kmsRoute(s, 'kms.rotate', REGIONAL, async (req, ctx) => {
      const current = ctx.key(String(req.params.id), 'update');
      parse(schemas.noBody, req.body);
      const key = await s.rotation.rotateManual(current);
      ctx.auditVersion = String(key.latestVersion);
      return { body: keyToWire(key) };
    }),
  );

  r.patch(
    '/v1/kms/:region/keys/:id/rotation',
    kmsRoute(s, 'kms.rotation.update', REGIONAL, async (req, ctx) => {
      const key = ctx.key(String(req.params.id), 'update');
      const body = parse(schemas.updateRotation, req.body);
      return { body: keyToWire(await s.rotation.updatePolicy(key, body, ctx.requestId)) };
    }),
  );

  r.post(
    '/v1/kms/:region/keys/:id/disable',
    kmsRoute(s, 'kms.disable', REGIONAL, async (req, ctx) => {
      const key = ctx.key(String(req.params.id), 'update');
      parse(schemas.noBody, req.body);
      return { body: keyToWire(await s.keys.disable(key)) };
    }),
  );

  r.post(
    '/v1/kms/:region/keys/:id/enable',
    kmsRoute(s, 'kms.enable', REGIONAL, async (req, ctx) => {
      const key = ctx.key(String(req.params.id), 'update');
      parse(schemas.noBody, req.body);
      return { body: keyToWire(await s.keys.enable(key)) };
    }),
  );

  r.delete(
    '/v1/kms/:region/keys/:id',
    kmsRoute(s, 'kms.delete.scheduled', REGIONAL, async (req, ctx) => {
      const key = ctx.key(String(req.params.id), 'delete');
      // {"pendingWindowInDays": 7} in a body was ignored (a 30-day window); it is a query parameter.
      if (req.body && typeof req.body === 'object' && 'pendingWindowInDays' in req.body)
        throw validation('pendingWindowInDays: a query parameter (DELETE …/keys/{id}?pendingWindowInDays=7), not a body field');
      parse(schemas.noBody, req.body);
      const q = parseQuery(querySchemas.deleteKey, req.query);
      return { body: keyToWire(await s.keys.scheduleDeletion(key, q.pendingWindowInDays ?? 30)) };
    }),
  );

  const cancel = kmsRoute(s, 'kms.delete.cancel', REGIONAL, async (req, ctx) => {
    const key = ctx.key(String(req.params.id), 'delete');
    parse(schemas.noBody, req.body);
    return { body: keyToWire(await s.keys.cancelDeletion(key)) };
  });
  r.delete('/v1/kms/:region/keys/:id/cancel-deletion', cancel);
  r.post('/v1/kms/:region/keys/:id/cancel-deletion', cancel);

  return r;
}
