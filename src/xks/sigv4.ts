import crypto, { createHash, createHmac, timingSafeEqual, type BinaryLike, type Hmac } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { ALGORITHM_IDENTIFIER, createScope, getCanonicalHeaders, getSigningKey, SignatureV4 } from '@smithy/signature-v4';
import type { Checksum, HeaderBag, HttpRequest, QueryParameterBag, SourceData } from '@smithy/types';
import { xksAuthFailed } from './errors.js';

/**
 * Why a request failed authentication: an access key id no credential has (`unknownAccessKey`),
 * or anything else (`invalid`: malformed header, wrong scope, stale date, bad signature). XKS
 * answers both the same; the AWS KMS API tells them apart.
 */
export type SigV4Failure = 'unknownAccessKey' | 'invalid';

export interface SigV4Options {
  /** The service in the credential scope (default the XKS proxy's). */
  service?: string;
  /** The error to throw (default XKS's AuthenticationFailedException). */
  fail?: (kind: SigV4Failure, message: string) => Error;
  /** Wall clock, not the daemon's testing clock: signers stamp real time. */
  nowMs?: () => number;
}

/** The service name every XKS request is signed for (spec, Appendix A). */
export const XKS_SERVICE = 'kms-xks-proxy';
/** Requests more than 5 minutes in the past or future fail authentication (spec, Task 4). */
export const MAX_CLOCK_SKEW_MS = 5 * 60_000;

export interface XksCredential {
  accessKeyId: string;
  secretAccessKey: string;
}

/** What the verifier needs of a received request: exactly the bytes the signer saw. */
export interface ReceivedRequest {
  method: string;
  path: string;
  /** Raw query string without `?` ('' when none). */
  query: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

const AUTH = /^AWS4-HMAC-SHA256 (.+)$/;
const AMZ_DATE = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/;
const SIGNATURE = /^[0-9a-f]{64}$/;

interface ParsedAuthorization {
  accessKeyId: string;
  date: string;
  region: string;
  service: string;
  signedHeaders: string[];
  signature: string;
}

/** The form every AWS signer writes (members in this order, `, ` between them): parsed by one regex. */
const CANONICAL_AUTH = /^AWS4-HMAC-SHA256 Credential=([^,\s]*),\s*SignedHeaders=([^,\s]*),\s*Signature=([0-9a-f]{64})$/;

/** Credential, SignedHeaders and Signature of an Authorization header ('' when absent); null: not AWS4-HMAC-SHA256. */
function authorizationFields(header: string): { credential: string; signedHeaders: string; signature: string } | null {
  const trimmed = header.trim();
  const c = CANONICAL_AUTH.exec(trimmed);
  if (c) return { credential: c[1]!, signedHeaders: c[2]!, signature: c[3]! };
  // Any other spelling the general rule allows: members in any order, optional spaces.
  const m = AUTH.exec(trimmed);
  if (!m) return null;
  const fields = new Map<string, string>();
  for (const part of m[1]!.split(/,\s*/)) {
    const eq = part.indexOf('=');
    if (eq > 0) fields.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  return { credential: fields.get('Credential') ?? '', signedHeaders: fields.get('SignedHeaders') ?? '', signature: fields.get('Signature') ?? '' };
}

function parseAuthorization(header: string | undefined, fail: (m: string) => Error): ParsedAuthorization {
  const fields = header ? authorizationFields(header) : null;
  if (!fields) throw fail('missing or malformed Authorization header (expected AWS4-HMAC-SHA256)');
  const scope = fields.credential.split('/');
  const signedHeaders = fields.signedHeaders.split(';').filter(Boolean);
  const signature = fields.signature;
  if (scope.length !== 5 || scope[4] !== 'aws4_request' || !signedHeaders.length || !SIGNATURE.test(signature))
    throw fail('malformed Authorization header: Credential, SignedHeaders and Signature are required');
  const [accessKeyId, date, region, service] = scope as [string, string, string, string];
  return { accessKeyId, date, region, service, signedHeaders, signature };
}

function parseAmzDate(v: string | string[] | undefined, fail: (m: string) => Error): Date {
  const m = typeof v === 'string' ? AMZ_DATE.exec(v) : null;
  if (!m) throw fail('missing or malformed X-Amz-Date header (expected YYYYMMDDTHHMMSSZ)');
  const [, y, mo, d, h, mi, s] = m.map(Number) as number[];
  return new Date(Date.UTC(y!, mo! - 1, d!, h!, mi!, s!));
}

function parseQuery(raw: string): QueryParameterBag {
  // Prototype-less: a signed parameter named __proto__ or constructor is kept like any other.
  const bag = Object.create(null) as QueryParameterBag;
  for (const [k, v] of new URLSearchParams(raw)) {
    const prev = bag[k];
    bag[k] = prev === undefined || prev === null ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return bag;
}

/**
 * SHA-256 in one call. Node ≥ 20.12's crypto.hash makes no Hash object: each of those is a
 * native handle the garbage collector has to finalise, a large part of a verification's cost.
 */
const oneShotHash = (crypto as { hash?: (algorithm: string, data: BinaryLike, encoding: 'buffer') => Buffer }).hash;
function sha256(data: BinaryLike): Buffer {
  return oneShotHash ? oneShotHash('sha256', data, 'buffer') : createHash('sha256').update(data).digest();
}

/** node:crypto SHA-256 / HMAC-SHA256 in the shape smithy's signer takes (a Checksum constructor). */
class NodeSha256 implements Checksum {
  private readonly hmac: Hmac | undefined;
  private data: Uint8Array | undefined;
  constructor(secret?: SourceData) {
    this.hmac = secret === undefined ? undefined : createHmac('sha256', toBytes(secret));
  }
  update(data: Uint8Array): void {
    if (this.hmac) this.hmac.update(data);
    // Smithy hashes one piece (the canonical request); a second one is joined, never dropped.
    else this.data = this.data ? Buffer.concat([this.data, data]) : data;
  }
  digest(): Promise<Uint8Array> {
    return Promise.resolve(this.hmac ? this.hmac.digest() : sha256(this.data ?? new Uint8Array(0)));
  }
  reset(): void {
    throw new Error('NodeSha256 is single-use');
  }
}

function toBytes(d: SourceData): Uint8Array | string {
  if (typeof d === 'string' || d instanceof Uint8Array) return d;
  return ArrayBuffer.isView(d) ? new Uint8Array(d.buffer, d.byteOffset, d.byteLength) : new Uint8Array(d);
}

/**
 * AWS's signer with its canonicalisation steps opened to the verifier: the canonical request
 * (path normalisation and escaping, sorted query, header list) and the string to sign are
 * smithy's own code; only what a signer adds around them (credential and region providers, a
 * clone of the request, the Authorization header text, a signing-key lookup that HMACs the
 * secret on every call to find its cache entry) is left out.
 */
class CanonicalSigner extends SignatureV4 {
  constructor(service: string, region: string) {
    // The credentials are never used: signing keys are derived per access key (see signingKey).
    super({ service, region, credentials: { accessKeyId: '', secretAccessKey: '' }, sha256: NodeSha256, applyChecksum: false });
  }

  /** X-Amz-Date as the signer writes it (YYYYMMDDTHHMMSSZ) and its day. */
  dates(date: Date): { longDate: string; shortDate: string } {
    return this.formatDate(date);
  }

  /**
   * The SigV4 string to sign of a request whose signed headers are `canonicalHeaders`: smithy's
   * canonical request, and its createStringToSign's four lines written here with a synchronous
   * SHA-256 (smithy's own awaits its Checksum's digest: a promise per request for nothing).
   */
  stringToSign(request: HttpRequest, canonicalHeaders: HeaderBag, payloadHash: string, longDate: string, scope: string): string {
    const canonicalRequest = this.createCanonicalRequest(request, canonicalHeaders, payloadHash);
    return `${ALGORITHM_IDENTIFIER}\n${longDate}\n${scope}\n${sha256(canonicalRequest).toString('hex')}`;
  }
}

/** Days whose signing keys a credential keeps (the clock skew allows at most two at once). */
const SIGNING_KEY_DAYS = 3;
/** What the signer drops from a request and writes itself (smithy's prepareRequest): never part of the canonical headers. */
const GENERATED = new Set(['authorization', 'date']);
const NO_QUERY: QueryParameterBag = Object.freeze(Object.create(null) as QueryParameterBag);

interface SigningDate {
  /** The X-Amz-Date header as received. */
  header: string;
  ms: number;
  longDate: string;
  shortDate: string;
  scope: string;
}

interface Secret {
  credentials: XksCredential;
  /** Signing keys by day (YYYYMMDD), derived by smithy's getSigningKey. */
  keys: Map<string, Uint8Array>;
}

/**
 * SigV4 verification for one keystore: recomputes the signature over the received request
 * with @smithy/signature-v4's canonicalisation (the AWS SDK's signer, so it is not ours) using
 * the secret the access key id names, and compares in constant time. Up to two credentials are
 * accepted at once so operators can rotate (spec, "SigV4 credentials rotation").
 */
export class SigV4Verifier {
  private readonly secrets = new Map<string, Secret>();
  private readonly signer: CanonicalSigner;
  private readonly service: string;
  private readonly nowMs: () => number;
  private readonly failWith: (kind: SigV4Failure, message: string) => Error;
  private lastDate: SigningDate | undefined;

  constructor(
    credentials: XksCredential[],
    readonly region: string,
    options: SigV4Options = {},
  ) {
    this.service = options.service ?? XKS_SERVICE;
    this.nowMs = options.nowMs ?? Date.now;
    this.failWith = options.fail ?? ((_kind, m) => xksAuthFailed(m));
    this.signer = new CanonicalSigner(this.service, region);
    for (const c of credentials) this.secrets.set(c.accessKeyId, { credentials: { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey }, keys: new Map() });
  }

  /** The day's signing key of a credential (kDate → kRegion → kService → kSigning: smithy's getSigningKey), kept for the day. */
  private async deriveSigningKey(secret: Secret, shortDate: string): Promise<Uint8Array> {
    const key = await getSigningKey(NodeSha256, secret.credentials, shortDate, this.region, this.service);
    secret.keys.set(shortDate, key);
    if (secret.keys.size > SIGNING_KEY_DAYS) secret.keys.delete(secret.keys.keys().next().value!);
    return key;
  }

  /**
   * An X-Amz-Date header taken apart: its time, the date the signer writes for it and the
   * credential scope of its day. Requests signed in the same second share one (the last is kept).
   */
  private signingDate(v: string | string[] | undefined, fail: (m: string) => Error): SigningDate {
    const last = this.lastDate;
    if (last && v === last.header) return last;
    const date = parseAmzDate(v, fail);
    const { longDate, shortDate } = this.signer.dates(date);
    this.lastDate = { header: v as string, ms: date.getTime(), longDate, shortDate, scope: createScope(shortDate, this.region, this.service) };
    return this.lastDate;
  }

  /** Resolves to the access key id that signed the request; rejects with the configured error (default AuthenticationFailedException). */
  verify(req: ReceivedRequest): Promise<string> {
    try {
      const r = this.check(req);
      return typeof r === 'string' ? Promise.resolve(r) : r;
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** The access key id that signed the request (a promise only on the first request of a credential's day); throws the configured error. */
  private check(req: ReceivedRequest): string | Promise<string> {
    const fail = (m: string) => this.failWith('invalid', m);
    const auth = parseAuthorization(typeof req.headers.authorization === 'string' ? req.headers.authorization : undefined, fail);
    const secret = this.secrets.get(auth.accessKeyId);
    if (!secret) throw this.failWith('unknownAccessKey', 'unknown access key id');
    if (auth.service !== this.service) throw fail(`credential scope names service ${auth.service}, expected ${this.service}`);
    if (auth.region !== this.region) throw fail(`credential scope names region ${auth.region}, expected ${this.region}`);
    const signed = new Set(auth.signedHeaders);
    if (!signed.has('host') || !signed.has('x-amz-date')) throw fail('SignedHeaders must include host and x-amz-date');

    const { ms, header: amzDate, longDate, shortDate, scope } = this.signingDate(req.headers['x-amz-date'], fail);
    if (Math.abs(this.nowMs() - ms) > MAX_CLOCK_SKEW_MS) throw fail('X-Amz-Date is more than 5 minutes off');
    if (auth.date !== amzDate.slice(0, 8)) throw fail('credential scope date does not match X-Amz-Date');

    const headers = Object.create(null) as Record<string, string>;
    for (const name of signed) {
      const v = req.headers[name];
      if (v === undefined) throw fail(`signed header ${name} is missing`);
      if (!GENERATED.has(name)) headers[name] = Array.isArray(v) ? v.join(',') : v;
    }
    // As the signer does: X-Amz-Date is the signing date it formats, whatever the header's spelling.
    headers['x-amz-date'] = longDate;
    // A signed x-amz-content-sha256 replaces the payload hash in the canonical request, so
    // it must be the body's real hash, or a replayed signature could carry another body.
    const bodyHash = sha256(req.body).toString('hex');
    const claimed = headers['x-amz-content-sha256'];
    if (claimed !== undefined && claimed !== bodyHash) throw fail('x-amz-content-sha256 does not match the body');

    const request: HttpRequest = {
      method: req.method,
      protocol: 'https:',
      hostname: headers.host!,
      path: req.path,
      query: req.query ? parseQuery(req.query) : NO_QUERY,
      headers,
      body: req.body,
    };
    const canonicalHeaders = getCanonicalHeaders(request, undefined, signed);
    const stringToSign = this.signer.stringToSign(request, canonicalHeaders, bodyHash, longDate, scope);
    const compare = (key: Uint8Array): string => {
      const expected = createHmac('sha256', key).update(stringToSign).digest();
      if (!timingSafeEqual(expected, Buffer.from(auth.signature, 'hex'))) throw fail('signature does not match');
      return auth.accessKeyId;
    };
    const key = secret.keys.get(shortDate);
    return key ? compare(key) : this.deriveSigningKey(secret, shortDate).then(compare);
  }
}
