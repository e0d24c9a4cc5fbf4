import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { Hash } from '@smithy/core/serde';
import { SignatureV4 } from '@smithy/signature-v4';
import type { HttpRequest } from '@smithy/types';
import { SigV4Verifier, type ReceivedRequest, type SigV4Failure } from '../../src/xks/sigv4.js';
import { ThreadedSigV4Verifier } from '../../src/xks/sigv4-thread.js';

const KEY_A = { accessKeyId: 'AKIAKMSDUNITTEST0001', secretAccessKey: 'secret-a/0123456789+abcdefghijklmnopqrstuv' };
const KEY_B = { accessKeyId: 'AKIAKMSDUNITTEST0002', secretAccessKey: 'secret-b/0123456789+abcdefghijklmnopqrstuv' };
const NOW = Date.UTC(2026, 0, 15, 12, 0, 0);

class Refused extends Error {
  constructor(
    readonly kind: SigV4Failure,
    message: string,
  ) {
    super(message);
  }
}

interface Draft {
  path?: string;
  query?: Record<string, string | string[]>;
  headers?: Record<string, string>;
  body?: string;
  date?: Date;
  key?: typeof KEY_A;
  region?: string;
  service?: string;
  applyChecksum?: boolean;
}

/** A request as an AWS SDK client signs it, converted to what the listener hands the verifier. */
async function signed(d: Draft = {}): Promise<ReceivedRequest> {
  const signer = new SignatureV4({
    service: d.service ?? 'kms',
    region: d.region ?? 'us-east-1',
    credentials: d.key ?? KEY_A,
    sha256: Hash.bind(null, 'sha256'),
    applyChecksum: d.applyChecksum ?? false,
  });
  const body = d.body ?? '{"KeyId":"k","Plaintext":"AAAA"}';
  const request: HttpRequest = {
    method: 'POST',
    protocol: 'http:',
    hostname: '127.0.0.1',
    port: 4599,
    path: d.path ?? '/',
    query: d.query ?? {},
    headers: { host: '127.0.0.1:4599', 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'TrentService.Encrypt', ...d.headers },
    body,
  };
  const out = await signer.sign(request, { signingDate: d.date ?? new Date(NOW) });
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(out.headers)) headers[k.toLowerCase()] = String(v);
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(d.query ?? {})) for (const x of Array.isArray(v) ? v : [v]) query.append(k, x);
  return { method: 'POST', path: d.path ?? '/', query: query.toString(), headers, body: Buffer.from(body) };
}

function verifier(nowMs = NOW): SigV4Verifier {
  return new SigV4Verifier([KEY_A, KEY_B], 'us-east-1', { service: 'kms', nowMs: () => nowMs, fail: (kind, m) => new Refused(kind, m) });
}

async function refusal(p: Promise<unknown>): Promise<Refused> {
  try {
    await p;
  } catch (e) {
    expect(e).to.be.instanceOf(Refused);
    return e as Refused;
  }
  throw new Error('the request was accepted');
}

/** The signature part of an Authorization header replaced by another well-formed one. */
const withSignature = (auth: string, sig: string) => auth.replace(/Signature=[0-9a-f]{64}$/, `Signature=${sig}`);

describe('unit: SigV4 verification (shared by XKS and the AWS KMS API)', () => {
  it('accepts what the AWS SDK signer signs, with either credential, and names the access key', async () => {
    const v = verifier();
    expect(await v.verify(await signed())).to.equal(KEY_A.accessKeyId);
    expect(await v.verify(await signed({ key: KEY_B }))).to.equal(KEY_B.accessKeyId);
    // Many times over the same signing day (the signing key is derived once and reused).
    for (let i = 0; i < 3; i++) expect(await v.verify(await signed({ body: `{"n":${i}}` }))).to.equal(KEY_A.accessKeyId);
  });

  it('accepts a signed x-amz-content-sha256 that matches the body, query strings (repeated and escaped) and odd paths', async () => {
    const v = verifier();
    expect(await v.verify(await signed({ applyChecksum: true }))).to.equal(KEY_A.accessKeyId);
    expect(await v.verify(await signed({ query: { b: ['2', '1'], a: 'x y/z', 'é~': '' } }))).to.equal(KEY_A.accessKeyId);
    expect(await v.verify(await signed({ path: '/kms/xks/v1/keys/my key/encrypt' }))).to.equal(KEY_A.accessKeyId);
    expect(await v.verify(await signed({ headers: { 'x-amz-meta': '  spaced   value  ' } }))).to.equal(KEY_A.accessKeyId);
  });

  it('accepts a request signed on the previous day within the clock skew, and a signature made across midnight', async () => {
    const midnight = Date.UTC(2026, 0, 16, 0, 0, 0);
    const v = verifier(midnight + 60_000);
    expect(await v.verify(await signed({ date: new Date(midnight - 60_000) }))).to.equal(KEY_A.accessKeyId);
    expect(await v.verify(await signed({ date: new Date(midnight + 30_000) }))).to.equal(KEY_A.accessKeyId);
    expect(await v.verify(await signed({ date: new Date(midnight - 90_000) }))).to.equal(KEY_A.accessKeyId);
  });

  it('refuses a changed body, method, path, query, signed header or signature', async () => {
    const v = verifier();
    const ok = await signed();
    const cases: ReceivedRequest[] = [
      { ...ok, body: Buffer.from('{"KeyId":"other","Plaintext":"AAAA"}') },
      { ...ok, method: 'PUT' },
      { ...ok, path: '/other' },
      { ...ok, query: 'a=1' },
      { ...ok, headers: { ...ok.headers, 'x-amz-target': 'TrentService.Decrypt' } },
      { ...ok, headers: { ...ok.headers, host: 'evil.example:4599' } },
      { ...ok, headers: { ...ok.headers, authorization: withSignature(ok.headers.authorization as string, '0'.repeat(64)) } },
    ];
    for (const c of cases) expect((await refusal(v.verify(c))).kind).to.equal('invalid');
  });

  it('refuses an x-amz-content-sha256 that is not the hash of the body, even when correctly signed', async () => {
    const v = verifier();
    const other = createHash('sha256').update('another body').digest('hex');
    const r = await signed({ headers: { 'x-amz-content-sha256': other } });
    expect((await refusal(v.verify(r))).message).to.match(/x-amz-content-sha256/);
  });

  it('refuses unknown keys, wrong scope, stale or future dates, missing host or x-amz-date, malformed headers', async () => {
    const v = verifier();
    expect((await refusal(v.verify(await signed({ key: { accessKeyId: 'AKIAKMSDUNKNOWN00009', secretAccessKey: 'x' } })))).kind).to.equal('unknownAccessKey');
    expect((await refusal(v.verify(await signed({ key: { ...KEY_A, secretAccessKey: 'wrong' } })))).message).to.match(/signature does not match/);
    expect((await refusal(v.verify(await signed({ region: 'eu-west-1' })))).message).to.match(/region/);
    expect((await refusal(v.verify(await signed({ service: 'kms-xks-proxy' })))).message).to.match(/service/);
    expect((await refusal(v.verify(await signed({ date: new Date(NOW - 6 * 60_000) })))).message).to.match(/5 minutes/);
    expect((await refusal(v.verify(await signed({ date: new Date(NOW + 6 * 60_000) })))).message).to.match(/5 minutes/);
    const ok = await signed();
    const auth = ok.headers.authorization as string;
    const bad = (headers: Record<string, string | undefined>) => refusal(v.verify({ ...ok, headers: { ...ok.headers, ...headers } }));
    expect((await bad({ authorization: undefined })).message).to.match(/missing or malformed Authorization/);
    expect((await bad({ authorization: auth.replace('AWS4-HMAC-SHA256', 'AWS4-HMAC-SHA1') })).message).to.match(/missing or malformed Authorization/);
    expect((await bad({ authorization: auth.replace(/Signature=.*$/, 'Signature=xyz') })).message).to.match(/malformed Authorization/);
    expect((await bad({ authorization: auth.replace('/aws4_request', '/aws5_request') })).message).to.match(/malformed Authorization/);
    expect((await bad({ authorization: auth.replace(/SignedHeaders=[^,]*/, 'SignedHeaders=content-type;x-amz-date') })).message).to.match(/host and x-amz-date/);
    expect((await bad({ authorization: auth.replace(/SignedHeaders=[^,]*/, 'SignedHeaders=content-type;host') })).message).to.match(/host and x-amz-date/);
    expect((await bad({ 'x-amz-date': undefined })).message).to.match(/X-Amz-Date/);
    expect((await bad({ 'x-amz-date': '2026-01-15T12:00:00Z' })).message).to.match(/X-Amz-Date/);
    expect((await bad({ authorization: auth.replace(/Credential=([^/]+)\/\d{8}/, 'Credential=$1/20260114') })).message).to.match(/scope date/);
    expect((await bad({ authorization: auth.replace(/SignedHeaders=/, 'SignedHeaders=x-missing;') })).message).to.match(/x-missing is missing/);
  });
});

describe('unit: SigV4 verification on its own thread (a process that leaves a core idle)', () => {
  const make = () => new ThreadedSigV4Verifier([KEY_A, KEY_B], 'us-east-1', { service: 'kms', fail: (kind, m) => new Refused(kind, m) });
  const inline = () => new SigV4Verifier([KEY_A, KEY_B], 'us-east-1', { service: 'kms', fail: (kind, m) => new Refused(kind, m) });
  const now = () => new Date();

  it('accepts and refuses exactly what the verifier on the event loop does, with its error built here', async () => {
    const v = make();
    const same = inline();
    try {
      // Several in one turn travel together and each gets its own answer.
      const good = await Promise.all([signed({ date: now() }), signed({ date: now(), key: KEY_B }), signed({ date: now(), body: '{"n":1}' })]);
      expect(await Promise.all(good.map((r) => v.verify(r)))).to.deep.equal([KEY_A.accessKeyId, KEY_B.accessKeyId, KEY_A.accessKeyId]);
      // More requests in one turn than one hand-over or one answer group carries: each still gets its own answer.
      const many = await Promise.all(Array.from({ length: 11 }, (_, i) => signed({ date: now(), key: i % 2 ? KEY_B : KEY_A, body: `{"n":${i}}` })));
      const tampered = many.map((r, i) => (i % 3 === 0 ? { ...r, body: Buffer.from('{"n":-1}') } : r));
      const answers = await Promise.all(tampered.map((r) => v.verify(r).then((id) => id, (e: Refused) => e.kind)));
      expect(answers).to.deep.equal(tampered.map((_, i) => (i % 3 === 0 ? 'invalid' : i % 2 ? KEY_B.accessKeyId : KEY_A.accessKeyId)));
      const ok = await signed({ date: now() });
      const cases: ReceivedRequest[] = [
        { ...ok, body: Buffer.from('{"KeyId":"other"}') },
        { ...ok, headers: { ...ok.headers, authorization: withSignature(ok.headers.authorization as string, '0'.repeat(64)) } },
        { ...ok, headers: { ...ok.headers, authorization: undefined } },
        await signed({ date: now(), key: { accessKeyId: 'AKIAKMSDUNKNOWN00001', secretAccessKey: 'x' } }),
        await signed({ date: new Date(Date.now() - 6 * 60_000) }),
      ];
      for (const c of cases) {
        const [threaded, onLoop] = [await refusal(v.verify(c)), await refusal(same.verify(c))];
        expect({ kind: threaded.kind, message: threaded.message }).to.deep.equal({ kind: onLoop.kind, message: onLoop.message });
      }
    } finally {
      await v.close();
    }
  });

  it('verifies on the event loop once the thread is gone', async () => {
    const v = make();
    await v.close();
    expect(await v.verify(await signed({ date: now() }))).to.equal(KEY_A.accessKeyId);
    expect((await refusal(v.verify({ ...(await signed({ date: now() })), body: Buffer.from('x') }))).kind).to.equal('invalid');
  });
});
