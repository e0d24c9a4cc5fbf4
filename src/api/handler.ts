import type { IncomingHttpHeaders } from 'node:http';
import type { Request, RequestHandler, Response } from 'express';
import { KmsError, validation } from '../errors.js';
import { mapError, type MappedError } from './errors.js';
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
}

export type RouteBody = (req: ApiRequest, ctx: RequestContext) => Reply | Promise<Reply>;

/** One API operation, independent of the HTTP framework: resolves to the status and JSON body to send. */
export type Operation = (req: ApiRequest, requestId: string) => Promise<{ status: number; body: unknown }>;

export interface RouteOptions {
  /** Route has a `:region` parameter. */
  regional: boolean;
  /** Organisations with kmsEnabled: false may still call it (summary answers featureEnabled: false). */
  allowDisabledOrg?: boolean;
  /** Do not resolve or require the region's token (e.g. audit reads). */
  tokenOptional?: boolean;
}

const errorBody = (m: MappedError, requestId: string) => ({ code: m.code, message: m.message, requestId });

/**
 * Wraps one API operation: authentication, organisation and region checks, the handler,
 * then the audit record — the reply is released only after that record is committed, for
 * allowed and denied requests alike.
 */
export function operation(s: Services, action: string, opts: RouteOptions, body: RouteBody): Operation {
  return async (req, requestId) => {
    const region = opts.regional ? String(req.params.region) : undefined;
    let ctx: RequestContext | undefined;
    let principal: string | null = null;
    let organisation: string | null = null;
    try {
      // Writes by kmsctl or another daemon (principals, keys, clock) are seen before anything else.
      await s.keys.fresh();
      const token = bearerToken(req.headers);
      if (!token) throw new KmsError('Unauthenticated', 'missing Authorization header (Bearer or Token)');
      const p = s.principals.authenticate(token);
      if (!p) throw new KmsError('Unauthenticated', 'unknown token');
      principal = p.name;
      organisation = requireOrganisation(req.headers);
      if (!p.organisations.includes(organisation)) throw new KmsError('Forbidden', `principal ${p.name} is not a member of organisation ${organisation}`);
      const org = s.config.organisations.find((o) => o.identity === organisation);
      if (!opts.allowDisabledOrg && !org?.kmsEnabled) throw new KmsError('KmsNotEnabled', `KMS is not enabled for organisation ${organisation}`);
      const project = typeof req.headers['x-project-identity'] === 'string' ? req.headers['x-project-identity'] : '';
      if (project.length > 128) throw validation('X-Project-Identity: at most 128 characters');
      if (region !== undefined && !s.regions.has(region)) throw new KmsError('NotFound', `region ${region} not found`);
      const c = (ctx = new RequestContext(s, requestId, p, organisation, project, region));
      // A token re-reading its object index (an object another process just made) is waited for, not a 503.
      const reply = await throughReread(() => {
        if (region !== undefined && !opts.tokenOptional) s.regions.require(region);
        return body(req, c);
      });
      await s.audit.record({
        action,
        outcome: 'success',
        region: region ?? null,
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
          region: region ?? null,
          keyIdentity: ctx?.auditKey ?? null,
          principal,
          organisation,
          requestId,
          detail: { code: m.code, status: m.status },
        });
      } catch (auditErr) {
        s.log.error('audit record failed', { requestId, error: String(auditErr) });
        return { status: 500, body: errorBody({ status: 500, code: 'InternalError', message: 'audit trail unavailable' }, requestId) };
      }
      return { status: m.status, body: errorBody(m, requestId) };
    }
  };
}

/** An operation as an Express route handler. */
export function expressRoute(op: Operation): RequestHandler {
  return async (req: Request, res: Response) => {
    const out = await op(req as ApiRequest, String(res.locals.requestId));
    res.status(out.status).json(out.body);
  };
}

/** Shorthand for routes only Express serves. */
export function kmsRoute(s: Services, action: string, opts: RouteOptions, body: RouteBody): RequestHandler {
  return expressRoute(operation(s, action, opts, body));
}
