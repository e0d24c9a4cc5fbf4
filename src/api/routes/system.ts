import { Router, type Request, type Response } from 'express';
import { KmsError } from '../../errors.js';
import { bearerToken } from '../context.js';
import type { AuditOutcome } from '../../audit/audit-log.js';
import { CLOCK_ACTION } from '../../audit/audit-log.js';
import { AUDIT_UNAVAILABLE, mapError, sendError } from '../errors.js';
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
    // Audit is fail-closed: a daemon that cannot write records refuses every KMS call, so it is not ready.
    const auditFailure = s.audit.unwritable();
    const audit = auditFailure === undefined ? { writable: true } : { writable: false, reason: auditFailure };
    const ready = storeUp && mongodb && audit.writable && Object.values(regions).every((r) => r.available);
    const down = [
      ...Object.entries(regions)
        .filter(([, r]) => !r.available)
        .map(([n]) => `region:${n}`),
      ...(storeUp ? [] : [storeKind]),
      ...(mongodb ? [] : ['mongodb']),
      ...(audit.writable ? [] : ['audit']),
    ];
    res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : 'degraded', store: storeKind, down, checks: { regions, [storeKind]: storeUp, mongodb, audit } });
  });

  r.get('/metrics', async (_req, res) => {
    for (const [name, t] of s.regions.tokens) {
      s.metrics.regionUp.set({ region: name }, t.available ? 1 : 0);
      s.metrics.workingCopies.set({ region: name }, t.workingCopies);
      s.metrics.tokenIndexComplete.set({ region: name }, t.available && !t.indexBuilding ? 1 : 0);
    }
    res.set('Content-Type', s.metrics.registry.contentType).send(await s.metrics.registry.metrics());
  });

  r.get('/openapi.json', (_req, res) => {
    res.json(doc);
  });

  /**
   * The testing clock's caller: any admin principal (no organisation header: the clock is the
   * whole daemon's). Resolves to the principal's name, or answers the error itself and resolves
   * to undefined; `audit` records the refusal of a move.
   */
  const clockAdmin = async (req: Request, res: Response, audit: boolean): Promise<string | undefined> => {
    const requestId = String(res.locals.requestId);
    if (!s.config.testing.clockControl) {
      sendError(res, { status: 404, code: 'NotFound', message: 'testing.clockControl is off' }, requestId);
      return undefined;
    }
    await s.keys.fresh();
    const token = bearerToken(req.headers);
    const p = token ? s.principals.authenticate(token) : undefined;
    const refusal = !p
      ? new KmsError('Unauthenticated', 'missing or unknown token')
      : !p.roles.includes('admin')
        ? new KmsError('Forbidden', 'the testing clock needs an admin principal')
        : undefined;
    if (refusal) {
      const m = mapError(refusal);
      if (audit && !(await recordClock(res, p?.name ?? null, 'denied', { code: m.code, status: m.status }))) return undefined;
      sendError(res, m, requestId);
      return undefined;
    }
    return p!.name;
  };

  /**
   * A move of the testing clock is audited as kms.testing.clock with no organisation: it moves
   * every organisation's schedules, so every organisation's listing shows the successful ones.
   * Resolves to false (having answered 503) when the audit trail cannot be written.
   */
  const recordClock = async (res: Response, principal: string | null, outcome: AuditOutcome, detail: Record<string, unknown>): Promise<boolean> => {
    const requestId = String(res.locals.requestId);
    try {
      await s.audit.record({ action: CLOCK_ACTION, outcome, region: null, keyIdentity: null, principal, organisation: null, requestId, detail });
      return true;
    } catch (e) {
      s.log.error('audit record failed', { requestId, error: String(e) });
      sendError(res, AUDIT_UNAVAILABLE, requestId);
      return false;
    }
  };

  r.get('/v1/testing/clock', async (req, res) => {
    if (!(await clockAdmin(req, res, false))) return;
    res.json({ now: s.clock.nowIso(), offsetSeconds: s.clock.offset / 1000 });
  });

  r.post('/v1/testing/clock', async (req, res) => {
    const principal = await clockAdmin(req, res, true);
    if (!principal) return;
    let seconds: number | undefined;
    try {
      seconds = parse(schemas.advanceClock, req.body).advanceSeconds;
      await s.advanceClock(seconds);
    } catch (e) {
      const m = mapError(e);
      if (await recordClock(res, principal, 'failure', { code: m.code, status: m.status, ...(seconds === undefined ? {} : { advanceSeconds: seconds }) }))
        sendError(res, m, String(res.locals.requestId));
      return;
    }
    if (!(await recordClock(res, principal, 'success', { advanceSeconds: seconds, offsetSeconds: s.clock.offset / 1000 }))) return;
    res.json({ now: s.clock.nowIso(), offsetSeconds: s.clock.offset / 1000 });
  });

  return r;
}
