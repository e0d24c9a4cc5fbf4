import type { IncomingHttpHeaders } from 'node:http';
import type { Principal, Permission } from '../auth/principals.js';
import { can } from '../auth/principals.js';
import { forbidden, validation } from '../errors.js';
import type { KeyRecord } from '../keys/model.js';
import type { Scope } from '../keys/key-service.js';
import type { Services } from './services.js';

/** What one authenticated request carries down to its handler (and to its audit record). */
export class RequestContext {
  auditKey?: string;
  auditVersion?: string;
  auditDetail?: Record<string, unknown>;

  constructor(
    readonly services: Services,
    readonly requestId: string,
    readonly principal: Principal,
    readonly organisation: string,
    readonly project: string,
    readonly region: string | undefined,
  ) {}

  get scope(): Scope {
    if (!this.region) throw new Error('route has no region');
    return { organisation: this.organisation, region: this.region, project: this.project };
  }

  require(perm: Permission): void {
    if (!can(this.principal, perm)) throw forbidden(`principal ${this.principal.name} lacks the ${perm} permission`);
  }

  /** Resolves a key in the caller's scope (404 if unseen) and checks the permission (403). */
  key(identityOrSlug: string, perm: Permission): KeyRecord {
    const k = this.services.keys.resolve(this.scope, identityOrSlug);
    this.auditKey = k.identity;
    this.require(perm);
    return k;
  }
}

const MAX_REQUEST_ID = 128;

export function requestIdFrom(headers: IncomingHttpHeaders, generate: () => string): string {
  const given = headers['x-request-id'];
  if (typeof given === 'string' && given.length > 0 && given.length <= MAX_REQUEST_ID && /^[\x21-\x7e]+$/.test(given)) return given;
  return generate();
}

export function bearerToken(headers: IncomingHttpHeaders): string | undefined {
  const h = headers.authorization;
  if (!h) return undefined;
  const m = /^(Bearer|Token)\s+(\S+)\s*$/i.exec(h);
  return m ? m[2] : undefined;
}

export function headerValue(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return typeof v === 'string' && v.length ? v : undefined;
}

export function requireOrganisation(headers: IncomingHttpHeaders): string {
  const org = headerValue(headers, 'x-organisation-identity');
  if (!org) throw validation('X-Organisation-Identity header is required');
  return org;
}

