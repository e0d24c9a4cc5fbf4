import { expect } from 'chai';
import { createPublicKey, randomBytes } from 'node:crypto';
import { z } from 'zod';
import { ownMongoUri } from './keys-token.js';
import { TestStack, type Daemon, type Reply } from '../helpers/stack.js';

/**
 * The Thalassa Go client's structs (../shared/THALASSA-CLIENT.md) as JSON schemas: exactly the
 * JSON type each field must have for Go's encoding/json to decode it. Unknown fields are allowed
 * (Go ignores them); "omit" fields may be absent but, when present, have the declared type.
 */
const rfc3339 = z.string().regex(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$/, 'RFC 3339 time');
const int = z.number().int();
const stringMap = z.record(z.string(), z.string());
const base64 = z.string().regex(/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/, 'standard base64');

const goVersion = z.object({ version: int, status: z.string().optional(), createdAt: rfc3339 });
const goOrganisation = z.object({
  identity: z.string(),
  name: z.string(),
  slug: z.string(),
  description: z.string().optional(),
  labels: stringMap.optional(),
  annotations: stringMap.optional(),
  createdAt: rfc3339.optional(),
  updatedAt: rfc3339.optional(),
});
const goKey = z.object({
  identity: z.string(),
  name: z.string(),
  slug: z.string(),
  description: z.string().optional(),
  labels: stringMap.optional(),
  annotations: stringMap.optional(),
  projectId: z.string().optional(),
  keyType: z.string(),
  status: z.enum(['active', 'disabled', 'pending_deletion']),
  exportAllowed: z.boolean(),
  imported: z.boolean().optional(),
  keyRotationEnabled: z.boolean(),
  rotationPeriodInDays: int.optional(),
  latestVersion: int,
  versions: z.array(goVersion),
  createdAt: rfc3339,
  updatedAt: rfc3339,
  objectVersion: int,
  organisation: goOrganisation,
});
const goSummary = z.object({
  featureEnabled: z.boolean(),
  regions: z.array(
    z.object({
      identity: z.string(),
      name: z.string(),
      slug: z.string(),
      kmsAvailable: z.boolean(),
      totalKeys: int,
      activeKeys: int,
      disabledKeys: int,
      pendingDeletionKeys: int,
    }),
  ),
});
const goEncrypt = z.object({ ciphertext: z.string(), keyVersion: z.string() });
const goDecrypt = z.object({ plaintext: base64, keyVersion: z.string() });
const goSign = z.object({ signature: z.string(), keyVersion: z.string() });
const goVerify = z.object({ valid: z.boolean() });
const goHmac = z.object({ hmac: z.string(), keyVersion: z.string() });
const goVerifyHmac = z.object({ valid: z.boolean(), keyVersion: z.string() });
const goPublicKey = z.object({ keys: z.record(z.string().regex(/^[1-9][0-9]*$/), z.string()) });
const goWrappingKey = z.object({ publicKey: z.string(), algorithm: z.string() });
const goError = z.object({ message: z.string().min(1) });

/** What the Go client does with a response: decode only JSON, into the struct. */
function decode<S extends z.ZodType>(schema: S, r: Reply, status = 200): z.output<S> {
  expect(r.status, JSON.stringify(r.body)).to.equal(status);
  expect(r.headers.get('content-type')).to.match(/^application\/json/);
  const parsed = schema.safeParse(r.body);
  if (!parsed.success) expect.fail(`Go client cannot decode: ${JSON.stringify(parsed.error.issues)}\n${JSON.stringify(r.body)}`);
  return parsed.data;
}

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

describe('client-compat: responses decode into the Thalassa Go client\u2019s structs', function () {
  this.timeout(120_000);
  let stack: TestStack;
  let d: Daemon;
  /** Requests the way the Go client sends them: `Token` scheme, Accept JSON, no body when it has none. */
  const go = (method: string, path: string, body?: unknown, project?: string) =>
    d.call(method, `/v1/kms${path}`, body, {
      token: null,
      project,
      headers: { authorization: `Token ${stack.token('admin')}`, accept: 'application/json' },
    });

  before(async () => {
    stack = await TestStack.create({ name: 'compat', mongodbUri: ownMongoUri('compat') });
    d = await stack.start();
  });
  after(() => stack.cleanup());

  it('the schemas are not vacuous: they reject what Go\u2019s encoding/json would refuse', async () => {
    const k = (await go('GET', '/nl-01/keys/default')).body;
    expect(goKey.safeParse(k).success).to.equal(true);
    const broken: Record<string, unknown>[] = [
      { ...k, latestVersion: '1' },
      { ...k, rotationPeriodInDays: null },
      { ...k, rotationPeriodInDays: 1.5 },
      { ...k, createdAt: '' },
      { ...k, createdAt: 1700000000 },
      { ...k, exportAllowed: 'false' },
      { ...k, labels: { a: 1 } },
      { ...k, versions: [{ version: '1', createdAt: k.createdAt }] },
      { ...k, status: 'Active' },
    ];
    for (const b of broken) expect(goKey.safeParse(b).success, JSON.stringify(b).slice(0, 80)).to.equal(false);
    expect(goEncrypt.safeParse({ ciphertext: 'kms:v1:AAAA', keyVersion: 1 }).success).to.equal(false);
    expect(z.array(goKey).safeParse({ keys: [k] }).success).to.equal(false);
    expect(goError.safeParse({ error: { message: 'x' } }).success).to.equal(false);
  });

  it('CreateKey (omitting false booleans) and GetKey decode into key; versions are integers, times RFC 3339', async () => {
    const created = decode(goKey, await go('POST', '/nl-01/keys', { name: 'go key', keyType: 'aes256-gcm96' }), 201);
    expect(created.keyRotationEnabled).to.equal(false);
    expect(created).not.to.have.property('rotationPeriodInDays');
    const withRotation = decode(
      goKey,
      await go('POST', '/nl-01/keys', {
        name: 'go rotating',
        keyType: 'hmac-sha256',
        description: 'd',
        labels: { env: 'prod' },
        annotations: { a: 'b' },
        exportAllowed: true,
        keyRotationEnabled: true,
        rotationPeriodInDays: 30,
      }),
      201,
    );
    expect(withRotation.rotationPeriodInDays).to.equal(30);
    const got = decode(goKey, await go('GET', `/nl-01/keys/${created.identity}`));
    expect(got.identity).to.equal(created.identity);
  });

  it('ListKeys decodes a JSON array of key, also with every filter the client sends, and [] when nothing matches', async () => {
    const list = decode(z.array(goKey), await go('GET', '/nl-01/keys'));
    expect(list.length).to.be.greaterThan(0);
    const q = `?name=${encodeURIComponent('go rotating')}&slug=go-rotating&status=active&region=nl-01&${encodeURIComponent('matchLabels[env]')}=prod`;
    const filtered = decode(z.array(goKey), await go('GET', `/nl-01/keys${q}`));
    expect(filtered.map((k) => k.slug)).to.deep.equal(['go-rotating']);
    const none = decode(z.array(goKey), await go('GET', '/nl-01/keys?slug=nothing-here'));
    expect(none).to.deep.equal([]);
    expect(JSON.stringify((await go('GET', '/nl-01/keys?slug=nothing-here')).body)).to.equal('[]');
  });

  it('GetSummary decodes into summary', async () => {
    const s = decode(goSummary, await go('GET', '/summary'));
    expect(s.featureEnabled).to.equal(true);
    expect(s.regions[0]!.slug).to.equal('nl-01');
  });

  it('RotateKey, DisableKey, EnableKey (no body) and UpdateRotation decode into key', async () => {
    const id = (await go('GET', '/nl-01/keys/go-key')).body.identity;
    expect(decode(goKey, await go('POST', `/nl-01/keys/${id}/rotate`)).latestVersion).to.equal(2);
    expect(decode(goKey, await go('POST', `/nl-01/keys/${id}/disable`)).status).to.equal('disabled');
    expect(decode(goKey, await go('POST', `/nl-01/keys/${id}/enable`)).status).to.equal('active');
    const on = decode(goKey, await go('PATCH', `/nl-01/keys/${id}/rotation`, { keyRotationEnabled: true, rotationPeriodInDays: 45 }));
    expect(on).to.include({ keyRotationEnabled: true, rotationPeriodInDays: 45 });
    // the client omits false: {} turns rotation off
    const off = decode(goKey, await go('PATCH', `/nl-01/keys/${id}/rotation`, {}));
    expect(off.keyRotationEnabled).to.equal(false);
  });

  it('DeleteKey and CancelDeletion (DELETE, no body) succeed with a 2xx the client accepts', async () => {
    const k = decode(goKey, await go('POST', '/nl-01/keys', { name: 'go delete', keyType: 'aes128-gcm96' }), 201);
    const del = await go('DELETE', `/nl-01/keys/${k.identity}`);
    expect(del.status).to.equal(200);
    expect(decode(goKey, del).status).to.equal('pending_deletion');
    const cancel = await go('DELETE', `/nl-01/keys/${k.identity}/cancel-deletion`);
    expect(decode(goKey, cancel).status).to.equal('active');
  });

  it('Encrypt/Decrypt with keyVersion as a string, Sign/Verify, HMAC/VerifyHMAC, GetPublicKey', async () => {
    const aes = (await go('GET', '/nl-01/keys/go-key')).body.identity;
    const e = decode(goEncrypt, await go('POST', `/nl-01/keys/${aes}/encrypt`, { plaintext: b64('hello go'), keyVersion: '1' }));
    expect(e.keyVersion).to.equal('1');
    const dd = decode(goDecrypt, await go('POST', `/nl-01/keys/${aes}/decrypt`, { ciphertext: e.ciphertext }));
    expect(Buffer.from(dd.plaintext, 'base64').toString()).to.equal('hello go');
    expect(dd.keyVersion).to.equal('1');

    const ec = decode(goKey, await go('POST', '/nl-01/keys', { name: 'go signer', keyType: 'ecdsa-p384' }), 201);
    const s = decode(goSign, await go('POST', `/nl-01/keys/${ec.identity}/sign`, { input: b64('msg'), hashAlgorithm: 'sha2-384', prehashed: false }));
    expect(s.keyVersion).to.equal('1');
    expect(decode(goVerify, await go('POST', `/nl-01/keys/${ec.identity}/verify`, { input: b64('msg'), signature: s.signature })).valid).to.equal(true);
    expect(decode(goVerify, await go('POST', `/nl-01/keys/${ec.identity}/verify`, { input: b64('other'), signature: s.signature })).valid).to.equal(false);
    const pk = decode(goPublicKey, await go('GET', `/nl-01/keys/${ec.identity}/public-key`));
    expect(createPublicKey(pk.keys['1']!).asymmetricKeyType).to.equal('ec');
    decode(goPublicKey, await go('GET', `/nl-01/keys/${ec.identity}/public-key?version=1`));

    const hm = (await go('GET', '/nl-01/keys/go-rotating')).body.identity;
    const h = decode(goHmac, await go('POST', `/nl-01/keys/${hm}/hmac`, { input: b64('m') }));
    const vh = decode(goVerifyHmac, await go('POST', `/nl-01/keys/${hm}/verify-hmac`, { input: b64('m'), hmac: h.hmac }));
    expect(vh).to.deep.equal({ valid: true, keyVersion: '1' });
  });

  it('GetWrappingKey decodes into wrapping key', async () => {
    const w = decode(goWrappingKey, await go('GET', '/nl-01/wrapping-key'));
    expect(w.publicKey).to.include('BEGIN PUBLIC KEY');
    expect(w.algorithm).to.equal('RSA_AES_KEY_WRAP');
  });

  it('errors carry a top-level message (and code, requestId) as JSON, for every error status', async () => {
    const aes = (await go('GET', '/nl-01/keys/go-key')).body.identity;
    const cases: [string, Promise<Reply>, number][] = [
      ['400 bad request', go('POST', '/nl-01/keys', { name: 'x', keyType: 'nope' }), 400],
      ['400 malformed JSON', d.call('POST', '/v1/kms/nl-01/keys', undefined, { raw: '{' }), 400],
      ['401', d.call('GET', '/v1/kms/nl-01/keys', undefined, { token: null }), 401],
      ['403 KmsNotEnabled', d.call('GET', '/v1/kms/nl-01/keys', undefined, { org: 'org-off' }), 403],
      ['404 key', go('GET', '/nl-01/keys/does-not-exist'), 404],
      ['404 region', go('GET', '/xx-01/keys'), 404],
      ['409 conflict', go('POST', '/nl-01/keys', { name: 'go key', keyType: 'aes256-gcm96' }), 409],
      ['409 state', go('POST', '/nl-01/keys/default/disable'), 409],
      ['413', go('POST', `/nl-01/keys/${aes}/encrypt`, { plaintext: b64(randomBytes(70_000)) }), 413],
      ['422', go('POST', `/nl-01/keys/${aes}/decrypt`, { ciphertext: `kms:v1:${b64(randomBytes(40))}` }), 422],
    ];
    for (const [what, p, status] of cases) {
      const r = await p;
      const e = decode(goError, r, status);
      expect(e.message, what).to.be.a('string');
      expect(r.body.code, what).to.be.a('string');
      expect(r.body.requestId, what).to.equal(r.headers.get('x-request-id'));
    }
  });

  it('every response is application/json, including unknown routes and unsupported methods', async () => {
    const paths: [string, string][] = [
      ['GET', '/nope'],
      ['GET', '/v1/kms/nl-01/nope'],
      ['POST', '/v1/kms/nl-01/keys/go-key/unknown-operation'],
      ['PUT', '/v1/kms/nl-01/keys/go-key'],
      ['GET', '/v1/kms/nl-01/keys/go-key/encrypt'],
      ['DELETE', '/v1/kms/summary'],
      ['GET', '/healthz'],
      ['GET', '/readyz'],
      ['GET', '/openapi.json'],
      ['GET', '/v1/testing/clock'],
    ];
    for (const [method, p] of paths) {
      const r = await d.call(method, p);
      expect(r.headers.get('content-type'), `${method} ${p}`).to.match(/^application\/json/);
      expect(r.status, `${method} ${p}`).to.be.below(500);
      if (r.status >= 400) decode(goError, r, r.status);
    }
  });

  it('key versions are strings in every keyVersion field; requests may send integers too', async () => {
    const aes = (await go('GET', '/nl-01/keys/go-key')).body.identity;
    const e = await go('POST', `/nl-01/keys/${aes}/encrypt`, { plaintext: b64('x'), keyVersion: 2 });
    expect(e.body.keyVersion).to.equal('2');
    const g = await go('POST', `/nl-01/keys/${aes}/generate-data-key`, {});
    expect(g.body.keyVersion).to.be.a('string');
    const re = await go('POST', `/nl-01/keys/${aes}/re-encrypt`, { ciphertext: e.body.ciphertext });
    expect(re.body.keyVersion).to.be.a('string');
    expect(re.body.sourceKeyVersion).to.be.a('string');
    const batch = await go('POST', `/nl-01/keys/${aes}/encrypt`, { batch: [{ plaintext: b64('a') }] });
    expect(batch.body.batch[0].keyVersion).to.be.a('string');
  });

  it('the OpenAPI document is JSON and describes the Go client\u2019s paths', async () => {
    const r = await d.call('GET', '/openapi.json', undefined, { token: null, org: null });
    expect(r.status).to.equal(200);
    expect(r.body.openapi).to.match(/^3\./);
    for (const p of ['/v1/kms/{region}/keys', '/v1/kms/{region}/keys/{id}/encrypt', '/v1/kms/{region}/keys/{id}/verify-hmac', '/v1/kms/summary'])
      expect(r.body.paths, p).to.have.property(p);
    const create = r.body.paths['/v1/kms/{region}/keys'].post.requestBody.content['application/json'].schema;
    expect(create.properties).to.include.keys('name', 'keyType', 'rotationPeriodInDays', 'keyRotationEnabled');
  });
});
