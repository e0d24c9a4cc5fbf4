import { Router, type Request, type Response } from 'express';
import { KmsError } from '../../errors.js';
import { bearerToken } from '../context.js';
import { mapError, sendError } from '../errors.js';
import { openApiDocument } from '../openapi.js';
import { schemas } from '../schemas.js';
import type { Services } from '../services.js';
import { parse } from '../validate.js';

/** Health, readiness, metrics, the OpenAPI document and the testing clock. */
export function systemRoutes(s: Services, version: string): Router {
  const r = Router();
  const doc = openApiDocument(version);

  r.get('/healthz', (_req, res) => {
    res.json({ status: 'ok', pid: process.pid });
  });

  r.get('/readyz', async (_req, res) => {
    const regions: Record<string, { available: boolean; reason?: string }> = {};
    for (const [name, t] of s.regions.tokens) regions[name] = t.available ? { available: true } : { available: false, reason: t.unavailableReason };
    const storeKind = s.readiness.storeKind;
    const storeUp = await s.readiness.store();
    const mongodb = s.readiness.mongodb();
    const ready = storeUp && mongodb && Object.values(regions).every((r) => r.available);
    const down = [
      ...Object.entries(regions)
        .filter(([, r]) => !r.available)
        .map(([n]) => `region:${n}`),
      ...(storeUp ? [] : [storeKind]),
      ...(mongodb ? [] : ['mongodb']),
    ];
    res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : 'degraded', store: storeKind, down, checks: { regions, [storeKind]: storeUp, mongodb } });
  });

  r.get('/metrics', async (_req, res) => {
    for (const [name, t] of s.regions.tokens) {
      s.metrics.regionUp.set({ region: name }, t.available ? 1 : 0);
      s.metrics.workingCopies.set({ region: name }, t.workingCopies);
    }
    res.set('Content-Type', s.metrics.registry.contentType).send(await s.metrics.registry.metrics());
  });

  r.get('/openapi.json', (_req, res) => {
    res.json(doc);
  });

  const clockAdmin = (req: Request, res: Response): boolean => {
    const requestId = String(res.locals.requestId);
    if (!s.config.testing.clockControl) {
      sendError(res, { status: 404, code: 'NotFound', message: 'testing.clockControl is off' }, requestId);
      return false;
    }
    const token = bearerToken(req.headers);
    const p = token ? s.principals.authenticate(token) : undefined;
    if (!p) {
      sendError(res, mapError(new KmsError('Unauthenticated', 'missing or unknown token')), requestId);
      return false;
    }
    if (!p.roles.includes('admin')) {
      sendError(res, mapError(new KmsError('Forbidden', 'the testing clock needs an admin principal')), requestId);
      return false;
    }
    return true;
  };

  r.get('/v1/testing/clock', async (req, res) => {
    if (!clockAdmin(req, res)) return;
    await s.keys.fresh();
    res.json({ now: s.clock.nowIso(), offsetSeconds: s.clock.offset / 1000 });
  });

  r.post('/v1/testing/clock', async (req, res) => {
    if (!clockAdmin(req, res)) return;
    try {
      const body = parse(schemas.advanceClock, req.body);
      await s.advanceClock(body.advanceSeconds);
      res.json({ now: s.clock.nowIso(), offsetSeconds: s.clock.offset / 1000 });
    } catch (e) {
      sendError(res, mapError(e), String(res.locals.requestId));
    }
  });

  return r;
}
