import { Router } from 'express';
import { kmsRoute } from '../handler.js';
import { querySchemas } from '../schemas.js';
import type { Services } from '../services.js';
import { parseQuery } from '../validate.js';

/** Audit trail: the caller organisation's events in a region, and the chain's integrity check. */
export function auditRoutes(s: Services): Router {
  const r = Router();

  r.get(
    '/v1/kms/audit/verify',
    kmsRoute(s, 'kms.audit.verify', { regional: false }, async (_req, ctx) => {
      ctx.require('audit');
      const v = await s.audit.verify();
      return { body: { valid: v.valid, events: v.events } };
    }),
  );

  r.get(
    '/v1/kms/:region/audit',
    kmsRoute(s, 'kms.audit.read', { regional: true, tokenOptional: true }, async (req, ctx) => {
      ctx.require('audit');
      const q = parseQuery(querySchemas.audit, req.query);
      const events = await s.audit.query({
        organisation: ctx.organisation,
        region: ctx.region,
        keyIdentity: q.keyIdentity,
        action: q.action,
        since: q.since ? new Date(q.since).toISOString() : undefined,
        limit: q.limit ?? 1000,
      });
      return {
        body: {
          events: events.map((e) => ({
            seq: e.seq,
            time: e.time,
            action: e.action,
            outcome: e.outcome,
            region: e.region,
            keyIdentity: e.keyIdentity,
            keyVersion: e.keyVersion,
            principal: e.principal,
            organisationIdentity: e.organisation,
            requestId: e.requestId,
            ...(e.detail?.xks ? { xks: e.detail.xks } : {}),
            ...(e.detail ? { detail: e.detail } : {}),
          })),
        },
      };
    }),
  );

  return r;
}
