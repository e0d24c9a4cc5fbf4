/** The four XKS operations and how their URIs look (spec: "API operations"). */
export type XksOperation = 'health' | 'metadata' | 'encrypt' | 'decrypt';

export interface XksRoute {
  /** The keystore's uriPrefix as configured (no leading or trailing slash; '' for none). */
  prefix: string;
  operation: XksOperation;
  /** `externalKeyId` for the key operations. */
  keyId?: string;
}

/**
 * `[/<prefix>]/kms/xks/v1/health` or `[/<prefix>]/kms/xks/v1/keys/<externalKeyId>/<op>`. The
 * prefix group is greedy so a prefix that itself contains `kms/xks/v1` still splits at the last one.
 */
const ROUTE = /^\/(?:(.+)\/)?kms\/xks\/v1\/(?:(health)|keys\/([^/]+)\/(metadata|encrypt|decrypt))$/;

/** Splits a request path into keystore prefix, operation and key id; undefined when it has no operation shape. */
export function matchRoute(path: string): XksRoute | undefined {
  const m = ROUTE.exec(path);
  if (!m) return undefined;
  const prefix = m[1] ?? '';
  if (m[2]) return { prefix, operation: 'health' };
  return { prefix, operation: m[4] as XksOperation, keyId: m[3] };
}

/** Ids the spec allows: letters, digits, `-`, `.`, `_`, at most 128. */
export const EXTERNAL_KEY_ID = /^[A-Za-z0-9._-]{1,128}$/;
