import type { IncomingHttpHeaders } from 'node:http';
import type { Request, RequestHandler, Response } from 'express';
import { KmsError, validation } from '../errors.js';
import { AUDIT_UNAVAILABLE, mapError, type MappedError } from './errors.js';
import { bearerToken, requireOrganisation, RequestContext } from './context.js';
import type { Services } from './services.js';
import { throughReread } from '../token/reread.js';

export interface Reply {
  status?: number;
  body: unknown;
}

/** What an operation reads from a request: the same fields whether Express or the fast path parsed it. */
export interface ApiRequest {
  params: Record<string, string>;
  body: unknown;
  query: Record<string, unknown>;
  headers: IncomingHttpHeaders;
  /** The request target as received (path and raw query), where the framework keeps it. */
  originalUrl?: string;
}

export type RouteBody = (req: ApiRequest, ctx: RequestContext) => Reply | Promise<Reply>;

/** What an operation answers: status, JSON body and extra headers (Retry-After on a 429). */
export interface OperationResult {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

/** One API operation, independent of the HTTP framework: resolves to the status and JSON body to send. */
export type Operation = (req: ApiRequest, requestId: string) => Promise<OperationResult>;

export interface RouteOptions {
  /** Route has a `:region` parameter. */
  regional: boolean;
  /** Organisations with kmsEnabled: false may still call it (summary answers featureEnabled: false). */
  allowDisabledOrg?: boolean;
  /** Do not resolve or require the region's token (e.g. audit reads). */
  tokenOptional?: boolean;
}

const errorBody = (m: MappedError, requestId: string) => ({ code: m.code, message: m.message, requestId });
const errorResult = (m: MappedError, requestId: string): OperationResult =>
  m.retryAfterSeconds === undefined
    ? { status: m.status, body: errorBody(m, requestId) }
    : { status: m.status, body: errorBody(m, requestId), headers: { 'Retry-After': String(m.retryAfterSeconds) } };

/**
 * Wraps one API operation: authentication, organisation and region checks, the handler,
 * then the audit record — the reply is released only after that record is committed, for
 * allowed and denied requests alike.
 */
export function operation(s: Services, action: string, opts: RouteOptions, body: RouteBody): Operation {
  return async (req, requestId) => {
    const region = opts.regional ? String(req.params.region) : undefined;
    // What a record of a rejected request may keep: only values checked against the configuration.
    const auditRegion = region !== undefined && s.regions.has(region) ? region : null;
    let ctx: RequestContext | undefined;
    let principal: string | null = null;
    let organisation: string | null = null;
    try {
      // Writes by kmsctl or another daemon (principals, keys, clock) are seen before anything else.
      const replaying = s.keys.fresh();
      if (replaying) await replaying; // usually nothing to wait for: no extra microtask turn then
      const token = bearerToken(req.headers);
      if (!token) throw new KmsError('Unauthenticated', 'missing Authorization header (Bearer or Token)');
      const p = s.principals.authenticate(token);
      if (!p) throw new KmsError('Unauthenticated', 'unknown token');
      principal = p.name;
      const claimed = requireOrganisation(req.headers);
      // Recorded only when it names an organisation kmsd knows (a member's, or a configured one).
      if (p.organisations.includes(claimed) || s.config.organisations.some((o) => o.identity === claimed)) organisation = claimed;
      if (!p.organisations.includes(claimed))
        throw new KmsError('Forbidden', `principal ${p.name} is not a member of organisation ${claimed.length > 128 ? `${claimed.slice(0, 128)}…` : claimed}`);
      const org = s.config.organisations.find((o) => o.identity === organisation);
      if (!opts.allowDisabledOrg && !org?.kmsEnabled) throw new KmsError('KmsNotEnabled', `KMS is not enabled for organisation ${organisation}`);
      const project = typeof req.headers['x-project-identity'] === 'string' ? req.headers['x-project-identity'] : '';
      if (project.length > 128) throw validation('X-Project-Identity: at most 128 characters');
      if (region !== undefined && !auditRegion) throw new KmsError('NotFound', `region ${region.length > 64 ? `${region.slice(0, 64)}…` : region} not found`);
      const c = (ctx = new RequestContext(s, requestId, p, claimed, project, region));
      // A token re-reading its object index (an object another process just made) is waited for, not a 503.
      const reply = await throughReread(() => {
        if (region !== undefined && !opts.tokenOptional) s.regions.require(region);
        return body(req, c);
      });
      await s.audit.record({
        action,
        outcome: 'success',
        region: auditRegion,
        keyIdentity: ctx.auditKey ?? null,
        keyVersion: ctx.auditVersion ?? null,
        principal,
        organisation,
        requestId,
        detail: ctx.auditDetail ?? null,
      });
      return { status: reply.status ?? 200, body: reply.body };
    } catch (e) {
      const m = mapError(e, region);
      if (m.status >= 500 && m.code === 'InternalError')
        s.log.error('request failed', { requestId, action, error: (e as Error)?.stack ?? String(e) });
      try {
        await s.audit.record({
          action,
          outcome: [401, 403, 404].includes(m.status) ? 'denied' : 'failure',
          region: auditRegion,
          // Only a key resolved in the caller's scope: an id the caller merely named (another
          // organisation's, say) is not recorded, so no listing learns of keys it cannot see.
          keyIdentity: ctx?.auditKey ?? null,
          // The version the input named (e.g. a tampered kms:v3: ciphertext), when it got that far.
          keyVersion: ctx?.auditVersion ?? null,
          principal,
          organisation,
          requestId,
          detail: { code: m.code, status: m.status },
        });
      } catch (auditErr) {
        s.log.error('audit record failed', { requestId, error: String(auditErr) });
        return errorResult(AUDIT_UNAVAILABLE, requestId);
      }
      return errorResult(m, requestId);
    }
  };
}

/** An operation as an Express route handler. */
export function expressRoute(op: Operation): RequestHandler {
  return async (req: Request, res: Response) => {
    const out = await op(req as ApiRequest, String(res.locals.requestId));
    if (out.headers) res.set(out.headers);
    res.status(out.status).json(out.body);
  };
}

/** Shorthand for routes only Express serves. */
export function kmsRoute(s: Services, action: string, opts: RouteOptions, body: RouteBody): RequestHandler {
  return expressRoute(operation(s, action, opts, body));
}
