import { expect } from 'chai';
import fc from 'fast-check';
import { ownMongoUri } from './keys-token.js';
import { TestStack, type Daemon, type Reply } from '../helpers/stack.js';

/**
 * Property-based stream of random request bodies against the crypto and key routes: whatever
 * arrives, kmsd answers with a JSON 2xx/4xx (never a 5xx) and keeps running. Each group sends
 * RUNS × PARALLEL random requests (PARALLEL at a time, so the daemon also sees them concurrently);
 * a failure prints fast-check's seed and the shrunk counterexample.
 */
const RUNS = 30;
const PARALLEL = 10;
const TOTAL = RUNS * PARALLEL;
type Body = { json?: unknown; raw?: string };

const b64 = (b: Uint8Array | string) => Buffer.from(b).toString('base64');

/** Values a field may receive: random JSON, wrong types, odd and huge strings, base64, kms:v strings. */
function fieldValue(): fc.Arbitrary<unknown> {
  const base64 = fc.uint8Array({ maxLength: 96 }).map(b64);
  const nearBase64 = fc.oneof(
    base64.map((s) => s.replace(/=+$/, '')),
    base64.map((s) => s.replace(/\+/g, '-').replace(/\//g, '_')),
    base64.map((s) => `${s}\n`),
    fc.string({ maxLength: 12 }),
  );
  const versioned = fc
    .tuple(fc.oneof(fc.integer({ min: -3, max: 12 }), fc.constantFrom(999999999, 1e10, 0)), fc.oneof(base64, nearBase64))
    .map(([v, d]) => `kms:v${v}:${d}`);
  const odd = fc.oneof(
    fc.string({ unit: 'binary', maxLength: 64 }),
    fc.string({ unit: 'grapheme', maxLength: 32 }),
    fc.constantFrom('', ' ', '\u0000', '\ud800', '__proto__', 'constructor', 'NaN', '-0', '1e309', 'kms:v1:', 'kms:v', 'AES_256', 'SHA1', 'sha2-256', 'pss'),
    fc.integer({ min: 1000, max: 70_000 }).map((n) => 'A'.repeat(n - (n % 4))),
  );
  const numbers = fc.oneof(fc.integer(), fc.double({ noNaN: true }), fc.constantFrom(0, -1, 1, 2, 3, 1.5, 2 ** 53, -(2 ** 31), 1e308));
  return fc.oneof(
    { weight: 3, arbitrary: base64 },
    { weight: 2, arbitrary: versioned },
    { weight: 2, arbitrary: odd },
    { weight: 1, arbitrary: nearBase64 },
    { weight: 1, arbitrary: numbers },
    { weight: 1, arbitrary: fc.boolean() },
    { weight: 1, arbitrary: fc.constant(null) },
    { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
  );
}

/** A body: a random JSON value, an object of known (and unknown) fields with random values, or raw text. */
function body(fields: string[]): fc.Arbitrary<Body> {
  const known = fc.dictionary(fc.constantFrom(...fields), fieldValue(), { maxKeys: fields.length });
  const withUnknown = fc.tuple(known, fc.dictionary(fc.string({ maxLength: 10 }), fieldValue(), { maxKeys: 2 })).map(([a, b]) => ({ ...b, ...a }));
  const batch = fc.array(fc.dictionary(fc.constantFrom('plaintext', 'ciphertext', 'aad', 'x'), fieldValue(), { maxKeys: 3 }), { maxLength: 6 }).map((b) => ({ batch: b }));
  return fc.oneof(
    { weight: 6, arbitrary: known.map((json) => ({ json })) },
    { weight: 2, arbitrary: withUnknown.map((json) => ({ json })) },
    { weight: 1, arbitrary: batch.map((json) => ({ json })) },
    { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 4 }).map((json) => ({ json })) },
    { weight: 1, arbitrary: fc.string({ maxLength: 200 }).map((raw) => ({ raw })) },
  );
}

describe('fuzz: random bodies never produce a 5xx', function () {
  this.timeout(180_000);
  let stack: TestStack;
  let d: Daemon;
  const ids: Record<string, string> = {};
  const statuses = new Map<number, number>();

  async function send(method: string, path: string, b: Body): Promise<Reply> {
    const r = await d.call(method, path, b.json, b.raw !== undefined ? { raw: b.raw } : {});
    statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
    return r;
  }

  function check(r: Reply, what: string): void {
    if (r.status >= 500 || !/^application\/json/.test(r.headers.get('content-type') ?? ''))
      throw new Error(`${what} → ${r.status} ${r.headers.get('content-type')} ${JSON.stringify(r.body).slice(0, 300)}`);
    if (r.status >= 400 && (typeof r.body?.code !== 'string' || typeof r.body?.message !== 'string'))
      throw new Error(`${what} → ${r.status} without code/message: ${JSON.stringify(r.body).slice(0, 300)}`);
  }

  /** RUNS runs of PARALLEL concurrent requests each. */
  async function stream(one: fc.Arbitrary<readonly [string, string, Body]>): Promise<void> {
    await fc.assert(
      fc.asyncProperty(fc.array(one, { minLength: PARALLEL, maxLength: PARALLEL }), async (reqs) => {
        const replies = await Promise.all(reqs.map(([method, path, b]) => send(method, path, b)));
        replies.forEach((r, i) => {
          const [method, path, b] = reqs[i]!;
          check(r, `${method} ${path} ${b.raw !== undefined ? `raw ${JSON.stringify(b.raw).slice(0, 120)}` : JSON.stringify(b.json)?.slice(0, 300)}`);
        });
      }),
      { numRuns: RUNS },
    );
  }

  async function fuzz(routes: [string, (id: string) => string, string][], fields: string[]): Promise<void> {
    const one = fc.tuple(fc.constantFrom(...routes), body(fields)).map(([[method, path, key], b]) => [method, `/v1/kms/nl-01${path(ids[key]!)}`, b] as const);
    await stream(one);
  }

  before(async () => {
    stack = await TestStack.create({ name: 'fuzz', mongodbUri: ownMongoUri('fuzz'), config: { limits: { maxBodyBytes: 65536, maxBatchItems: 4 } } });
    d = await stack.start();
    const make = async (name: string, type: string) => (ids[name] = (await d.createKey(`fuzz ${name}`, type)).identity);
    await Promise.all([
      make('aes', 'aes256-gcm96'),
      make('aes128', 'aes128-gcm96'),
      make('hmac', 'hmac-sha384'),
      make('ed', 'ed25519'),
      make('ec', 'ecdsa-p521'),
      make('rsa', 'rsa-2048'),
      make('mgmt', 'aes256-gcm96'),
    ]);
    await d.post(`/keys/${ids.aes}/rotate`);
  });
  after(async () => {
    // the daemon survived the whole stream and still serves
    if (d?.alive) expect((await d.post(`/keys/${ids.aes}/encrypt`, { plaintext: b64('still here') })).status).to.equal(200);
    await stack.cleanup();
  });

  it(`encrypt, decrypt, re-encrypt, generate-data-key (${TOTAL} requests)`, async () => {
    await fuzz(
      [
        ['POST', (id) => `/keys/${id}/encrypt`, 'aes'],
        ['POST', (id) => `/keys/${id}/decrypt`, 'aes'],
        ['POST', (id) => `/keys/${id}/re-encrypt`, 'aes'],
        ['POST', (id) => `/keys/${id}/generate-data-key`, 'aes128'],
        ['POST', (id) => `/keys/${id}/encrypt`, 'hmac'],
      ],
      ['plaintext', 'ciphertext', 'aad', 'keyVersion', 'batch', 'destinationKey', 'keySpec', 'includePlaintext'],
    );
    expect(d.alive).to.equal(true);
  });

  it(`sign and verify on Ed25519, ECDSA and RSA (${TOTAL} requests)`, async () => {
    await fuzz(
      [
        ['POST', (id) => `/keys/${id}/sign`, 'ed'],
        ['POST', (id) => `/keys/${id}/verify`, 'ed'],
        ['POST', (id) => `/keys/${id}/sign`, 'ec'],
        ['POST', (id) => `/keys/${id}/verify`, 'ec'],
        ['POST', (id) => `/keys/${id}/sign`, 'rsa'],
        ['POST', (id) => `/keys/${id}/verify`, 'rsa'],
      ],
      ['input', 'signature', 'keyVersion', 'hashAlgorithm', 'prehashed', 'signatureAlgorithm', 'context'],
    );
    expect(d.alive).to.equal(true);
  });

  it(`hmac, verify-hmac, decrypt-asymmetric (${TOTAL} requests)`, async () => {
    await fuzz(
      [
        ['POST', (id) => `/keys/${id}/hmac`, 'hmac'],
        ['POST', (id) => `/keys/${id}/verify-hmac`, 'hmac'],
        ['POST', (id) => `/keys/${id}/decrypt-asymmetric`, 'rsa'],
        ['POST', (id) => `/keys/${id}/decrypt-asymmetric`, 'ec'],
      ],
      ['input', 'hmac', 'keyVersion', 'algorithm', 'hashAlgorithm', 'ciphertext', 'hashFunction'],
    );
    expect(d.alive).to.equal(true);
  });

  it(`key management: create, patch, rotation policy (${TOTAL} requests)`, async () => {
    const types = ['aes256-gcm96', 'aes128-gcm96', 'hmac', 'hmac-sha512', 'ed25519', 'ecdsa-p256', 'chacha20-poly1305', 'rsa-1024', 'AES256-GCM96', 'rsa-4096 '];
    await stream(
      fc.oneof(
        body(['name', 'keyType', 'description', 'labels', 'annotations', 'exportAllowed', 'keyRotationEnabled', 'rotationPeriodInDays', 'allowRotation', 'hashFunction']).map(
          (b) => ['POST', '/v1/kms/nl-01/keys', b] as const,
        ),
        // near-valid creates: a real name and key type, random everything else
        fc
          .record(
            { name: fc.string({ minLength: 1, maxLength: 40 }), keyType: fc.constantFrom(...types), rotationPeriodInDays: fieldValue(), keyRotationEnabled: fieldValue(), labels: fieldValue() },
            { requiredKeys: ['name', 'keyType'] },
          )
          .map((json) => ['POST', '/v1/kms/nl-01/keys', { json } as Body] as const),
        body(['minDecryptionVersion', 'name', 'description']).map((b) => ['PATCH', `/v1/kms/nl-01/keys/${ids.mgmt}`, b] as const),
        body(['keyRotationEnabled', 'rotationPeriodInDays']).map((b) => ['PATCH', `/v1/kms/nl-01/keys/${ids.mgmt}/rotation`, b] as const),
      ),
    );
    expect(d.alive).to.equal(true);
  });

  it(`query strings and path segments of lists, deletes and public keys (${TOTAL} requests)`, async () => {
    const segment = fc.oneof(fc.string({ maxLength: 40 }), fc.constantFrom('default', 'fuzz-aes', '..', '%', '%zz', '%E0%A4%A', 'kms-'));
    const query = fc.dictionary(
      fc.constantFrom('identity', 'name', 'slug', 'status', 'region', 'matchLabels[env]', 'matchLabels', 'version', 'pendingWindowInDays', 'x'),
      fc.oneof(fc.string({ maxLength: 20 }), fc.integer().map(String), fc.constantFrom('%', '%zz', 'active', '7', '30', '1e1', '[]')),
    );
    const request = fc.tuple(fc.constantFrom('list', 'get', 'public-key', 'delete'), segment, query).map(([what, seg, q]) => {
      const qs = Object.entries(q)
        .map(([k, v]) => `${encodeURIComponent(k)}=${/^%/.test(v) ? v : encodeURIComponent(v)}`)
        .join('&');
      const id = /^%/.test(seg) ? seg : encodeURIComponent(seg);
      const keys = '/v1/kms/nl-01/keys';
      if (what === 'list') return ['GET', `${keys}?${qs}`, {}] as const;
      if (what === 'get') return ['GET', `${keys}/${id}?${qs}`, {}] as const;
      if (what === 'public-key') return ['GET', `${keys}/${id === 'fuzz-aes' ? ids.ec : id}/public-key?${qs}`, {}] as const;
      // deletes only on unknown keys, so the fixtures stay usable
      return ['DELETE', `${keys}/${id === 'default' || id === 'fuzz-aes' ? 'no-such-key' : id}?${qs}`, {}] as const;
    });
    await stream(request);
  });

  it('the stream exercised more than one outcome (it is not all one status)', () => {
    const seen = [...statuses.keys()];
    expect(seen.some((s) => s >= 200 && s < 300), JSON.stringify([...statuses])).to.equal(true);
    expect(seen.filter((s) => s >= 400 && s < 500).length, JSON.stringify([...statuses])).to.be.at.least(3);
    expect(seen.every((s) => s < 500)).to.equal(true);
  });
});
