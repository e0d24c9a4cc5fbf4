import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Role } from '../config/schema.js';
import type { PrincipalsRepository, Store } from '../store/store.js';

export interface Principal {
  name: string;
  tokenSha256: string;
  organisations: string[];
  roles: Role[];
  source: 'config' | 'store';
}

export type Permission = 'read' | 'create' | 'update' | 'delete' | 'import' | 'crypto' | 'audit' | 'export';

const ROLE_PERMISSIONS: Record<Role, ReadonlySet<Permission>> = {
  admin: new Set(['read', 'create', 'update', 'delete', 'import', 'crypto', 'audit', 'export']),
  'key-admin': new Set(['read', 'create', 'update', 'delete', 'import']),
  'crypto-user': new Set(['read', 'crypto']),
  auditor: new Set(['read', 'audit']),
};

export function can(p: Principal, perm: Permission): boolean {
  return p.roles.some((r) => ROLE_PERMISSIONS[r].has(perm));
}

export const sha256Hex = (s: string) => createHash('sha256').update(s).digest('hex');

/** Bearer tokens are only ever held as SHA-256; lookup by digest, then a constant-time compare. */
export class PrincipalDirectory {
  private byDigest = new Map<string, Principal>();

  constructor(
    private readonly fromConfig: Omit<Principal, 'source'>[],
    private readonly stored: PrincipalsRepository,
  ) {}

  async reload(): Promise<void> {
    const next = new Map<string, Principal>();
    for (const p of this.fromConfig) next.set(p.tokenSha256.toLowerCase(), { ...p, tokenSha256: p.tokenSha256.toLowerCase(), source: 'config' });
    for (const r of await this.stored.list())
      next.set(r.tokenSha256, { name: r.name, tokenSha256: r.tokenSha256, organisations: r.organisations, roles: r.roles, source: 'store' });
    this.byDigest = next;
  }

  authenticate(token: string): Principal | undefined {
    const digest = sha256Hex(token);
    const p = this.byDigest.get(digest);
    if (!p) return undefined;
    return timingSafeEqual(Buffer.from(p.tokenSha256, 'hex'), Buffer.from(digest, 'hex')) ? p : undefined;
  }

  list(): Principal[] {
    return [...this.byDigest.values()];
  }
}

/** A principal's name and organisation identities: 1–128 printable characters each (they go into every audit record). */
export const PRINCIPAL_FIELD = /^[\x21-\x7e]{1,128}$/;
/** At most this many organisations per principal. */
export const MAX_PRINCIPAL_ORGANISATIONS = 256;

function checkPrincipalFields(p: { name: string; organisations: string[] }): void {
  if (!PRINCIPAL_FIELD.test(p.name)) throw new Error('principal name: 1-128 printable characters without spaces');
  if (p.organisations.length > MAX_PRINCIPAL_ORGANISATIONS) throw new Error(`at most ${MAX_PRINCIPAL_ORGANISATIONS} organisations per principal`);
  for (const o of p.organisations) if (!PRINCIPAL_FIELD.test(o)) throw new Error(`organisation ${o.slice(0, 40)}: 1-128 printable characters without spaces`);
}

/** Used by `kmsctl principal add`: stores the digest, returns the token (shown once). */
export async function addPrincipal(
  store: Store,
  p: { name: string; organisations: string[]; roles: Role[] },
): Promise<string> {
  checkPrincipalFields(p);
  const token = `kmsd_${randomBytes(32).toString('base64url')}`;
  await store.transaction(async (tx) => {
    await tx.principals.add({ ...p, tokenSha256: sha256Hex(token), createdAt: new Date().toISOString() });
    await tx.changes.record(PRINCIPALS_CHANGED);
  });
  return token;
}

/** Pseudo key identities in key_changes that tell other processes to reload non-key state. */
export const PRINCIPALS_CHANGED = '@principals';
export const CLOCK_CHANGED = '@clock';
