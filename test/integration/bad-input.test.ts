import { expect } from 'chai';
import http from 'node:http';
import net from 'node:net';
import { ORG, TestStack, type Daemon, type Reply } from '../helpers/stack.js';
import { newAwsCredential, rawAwsCall } from '../helpers/aws.js';

/**
 * Bad input found by attacking a running daemon as a newcomer would (the README's walkthrough,
 * then malformed requests on both APIs): each case was a silent misreading or an answer-less
 * failure before its fix. Every answer must be a clear 4xx with the contract's code.
 */
function expectError(r: Reply, status: number, code: string, what = ''): void {
  expect(r.status, `${what} ${JSON.stringify(r.body)}`).to.equal(status);
  expect(r.body.code, `${what} ${JSON.stringify(r.body)}`).to.equal(code);
}

/** A raw request with exactly these headers and body (no Content-Type unless given). */
function rawCall(d: Daemon, method: string, path: string, body: string | undefined, headers: Record<string, string>): Promise<{ status: number; json: any }> {
  return new Promise((resolve, reject) => {
    const h: Record<string, string> = { authorization: `Bearer ${d.stack.token('admin')}`, 'x-organisation-identity': ORG, ...headers };
    if (body !== undefined) h['content-length'] = String(Buffer.byteLength(body));
    const req = http.request({ host: '127.0.0.1', port: d.port, method, path, headers: h }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode!, json: text ? JSON.parse(text) : undefined }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Bytes as written on a fresh connection, and everything the server sent back until it closed. */
function rawSocket(port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1', () => c.write(bytes));
    let got = '';
    c.setEncoding('latin1');
    c.on('data', (d) => (got += d));
    c.on('close', () => resolve(got));
    c.on('error', reject);
  });
}

/** Status, Content-Type and parsed body of a raw HTTP/1.1 reply. */
function parseReply(raw: string): { status: number; type: string; body: any } {
  const [head, body] = [raw.slice(0, raw.indexOf('\r\n\r\n')), raw.slice(raw.indexOf('\r\n\r\n') + 4)];
  const type = /^content-type:\s*(.*)$/im.exec(head)?.[1]?.trim() ?? '';
  return { status: Number(head.split(' ')[1]), type, body: body ? JSON.parse(body) : undefined };
}

describe('bad input: clear 4xx answers, never a silent misreading', function () {
  this.timeout(120_000);
  const SECRET_ENV = 'KMSD_TEST_AWS_SECRET_BAD_INPUT';
  const admin = newAwsCredential();
  let stack: TestStack;
  let d: Daemon;

  before(async () => {
    stack = await TestStack.create({ name: 'bad-input' });
    process.env[SECRET_ENV] = admin.secretAccessKey;
    d = await stack.start({
      aws: {
        listen: { host: '127.0.0.1', port: 0 },
        sigv4Region: 'us-east-1',
        accountId: '111122223333',
        credentials: [{ accessKeyId: admin.accessKeyId, secretAccessKeyEnv: SECRET_ENV, principal: 'admin', organisation: ORG, region: 'nl-01' }],
      },
      xks: {
        listen: { host: '127.0.0.1', port: 0 },
        keystores: [{ uriPrefix: '', organisation: ORG, region: 'nl-01', sigv4Region: 'us-east-1', credentials: [{ accessKeyId: 'XKSBADINPUTTESTACCESSKEY', secretAccessKeyEnv: SECRET_ENV }] }],
      },
    });
  });
  after(async () => {
    await stack.cleanup();
    delete process.env[SECRET_ENV];
  });

  describe('native API: a body that is not sent as JSON', () => {
    it('PATCH …/rotation with a JSON body sent as a form (curl -d without -H) → 400 naming Content-Type; rotation stays enabled', async () => {
      const key = await d.createKey('bi rotation', 'aes256-gcm96', { keyRotationEnabled: true, rotationPeriodInDays: 30 });
      const body = JSON.stringify({ keyRotationEnabled: true, rotationPeriodInDays: 60 });
      for (const type of ['application/x-www-form-urlencoded', 'text/plain']) {
        const r = await rawCall(d, 'PATCH', `/v1/kms/nl-01/keys/${key.identity}/rotation`, body, type ? { 'content-type': type } : {});
        expect(r.status, `${type} ${JSON.stringify(r.json)}`).to.equal(400);
        expect(r.json.code).to.equal('ValidationError');
        expect(r.json.message).to.match(/Content-Type/);
      }
      const now = await d.get(`/keys/${key.identity}`);
      expect(now.body).to.include({ keyRotationEnabled: true, rotationPeriodInDays: 30, rotationStatus: 'enabled' });
      // No Content-Type at all: the body is read as JSON (the contract's "JSON in").
      const untyped = await rawCall(d, 'PATCH', `/v1/kms/nl-01/keys/${key.identity}/rotation`, body, {});
      expect(untyped.status, JSON.stringify(untyped.json)).to.equal(200);
      expect(untyped.json).to.include({ keyRotationEnabled: true, rotationPeriodInDays: 60 });
    });

    it('POST /keys and encrypt as text/plain → 400 naming Content-Type (not "name: is required")', async () => {
      const create = await rawCall(d, 'POST', '/v1/kms/nl-01/keys', JSON.stringify({ name: 'bi plain', keyType: 'aes256-gcm96' }), { 'content-type': 'text/plain' });
      expect(create.status).to.equal(400);
      expect(create.json.message).to.match(/Content-Type/);
      const enc = await rawCall(d, 'POST', '/v1/kms/nl-01/keys/default/encrypt', JSON.stringify({ plaintext: 'aGk=' }), { 'content-type': 'text/plain' });
      expect(enc.status).to.equal(400);
      expect(enc.json.message).to.match(/Content-Type/);
    });

    it('requests that need no body still work with no body and no Content-Type', async () => {
      const key = await d.createKey('bi nobody', 'aes256-gcm96');
      expect((await rawCall(d, 'POST', `/v1/kms/nl-01/keys/${key.identity}/rotate`, undefined, {})).status).to.equal(200);
      expect((await rawCall(d, 'POST', `/v1/kms/nl-01/keys/${key.identity}/disable`, '', {})).status).to.equal(200);
      expect((await rawCall(d, 'POST', `/v1/kms/nl-01/keys/${key.identity}/enable`, undefined, { 'content-type': 'application/x-www-form-urlencoded' })).status).to.equal(200);
    });
  });

  describe('native API: a body on a request that takes none', () => {
    it('DELETE with {"pendingWindowInDays": 7} in the body → 400 naming the query parameter; the key stays active', async () => {
      const key = await d.createKey('bi delete body', 'aes256-gcm96');
      const r = await d.call('DELETE', `/v1/kms/nl-01/keys/${key.identity}`, { pendingWindowInDays: 7 });
      expectError(r, 400, 'ValidationError');
      expect(r.body.message).to.match(/query parameter/);
      expect((await d.get(`/keys/${key.identity}`)).body.status).to.equal('active');
    });

    it('rotate, disable, enable, cancel-deletion with a field → 400 unknown field; with {} or null they still work', async () => {
      const key = await d.createKey('bi no body', 'aes256-gcm96');
      for (const op of ['rotate', 'disable', 'enable']) {
        expectError(await d.post(`/keys/${key.identity}/${op}`, { reason: 'x' }), 400, 'ValidationError', op);
      }
      expect((await d.get(`/keys/${key.identity}`)).body).to.include({ latestVersion: 1, status: 'active' });
      expect((await d.post(`/keys/${key.identity}/rotate`, {})).status).to.equal(200);
      expect((await d.post(`/keys/${key.identity}/disable`, null)).status).to.equal(200);
      expect((await d.post(`/keys/${key.identity}/enable`, {})).status).to.equal(200);
      expect((await d.del(`/keys/${key.identity}`)).status).to.equal(200);
      expectError(await d.call('DELETE', `/v1/kms/nl-01/keys/${key.identity}/cancel-deletion`, { now: true }), 400, 'ValidationError');
      expect((await d.post(`/keys/${key.identity}/cancel-deletion`, {})).status).to.equal(200);
    });
  });

  describe('native API: a query parameter given twice or in a nested shape is 400, never ignored', () => {
    it('GET /keys?status=…&status=… and ?identity[x]=… → 400 (not every key, pending deletion included)', async () => {
      for (const q of ['status=active&status=disabled', 'identity=a&identity=b', 'name[x]=y', 'slug[]=z']) {
        expectError(await d.get(`/keys?${q}`), 400, 'ValidationError', q);
      }
      expect((await d.get('/keys?status=active')).status).to.equal(200);
    });

    it('DELETE ?pendingWindowInDays=7&pendingWindowInDays=30 → 400 and the key stays active', async () => {
      const key = await d.createKey('bi delete', 'aes256-gcm96');
      expectError(await d.del(`/keys/${key.identity}?pendingWindowInDays=7&pendingWindowInDays=30`), 400, 'ValidationError');
      expectError(await d.del(`/keys/${key.identity}?pendingWindowInDays[]=7`), 400, 'ValidationError');
      expect((await d.get(`/keys/${key.identity}`)).body.status).to.equal('active');
    });

    it('public-key ?version=1&version=2 and audit ?limit=1&limit=2 → 400', async () => {
      const key = await d.createKey('bi ed', 'ed25519');
      expectError(await d.get(`/keys/${key.identity}/public-key?version=1&version=2`), 400, 'ValidationError');
      expectError(await d.get('/audit?limit=1&limit=2'), 400, 'ValidationError');
    });
  });

  it('a key name whose letters are all outside a-z/0-9 → 400 saying which characters count', async () => {
    const r = await d.post('/keys', { name: 'ключ', keyType: 'aes256-gcm96' });
    expectError(r, 400, 'ValidationError');
    expect(r.body.message).to.match(/a-z/);
  });

  describe('requests the HTTP parser refuses get a JSON error, not a body-less 400', () => {
    for (const [what, bytes] of [
      ['a control character in a header value', 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\u0001b\r\n\r\n'],
      ['a request line that is not HTTP', 'GARBAGE\r\n\r\n'],
    ] as const) {
      it(`main API: ${what} → 400 ValidationError`, async () => {
        const r = parseReply(await rawSocket(d.port, bytes));
        expect(r.status).to.equal(400);
        expect(r.type).to.match(/^application\/json/);
        expect(r.body.code).to.equal('ValidationError');
      });
      it(`XKS proxy: ${what} → 400 with an XKS error name`, async () => {
        const r = parseReply(await rawSocket(d.xksPort!, bytes.replace('GET /healthz', 'POST /kms/xks/v1/health')));
        expect(r.status).to.equal(400);
        expect(r.type).to.match(/^application\/json/);
        expect(r.body.errorName).to.equal('ValidationException');
      });
      it(`AWS KMS API: ${what} → 400 with an AWS error name`, async () => {
        const r = parseReply(await rawSocket(d.awsPort!, bytes.replace('GET /healthz', 'POST /')));
        expect(r.status).to.equal(400);
        expect(r.type).to.equal('application/x-amz-json-1.1');
        expect(r.body.__type).to.equal('SerializationException');
      });
    }
  });

  it('a key name or description with a lone surrogate ("\\ud800") → 400, not stored as U+FFFD', async () => {
    for (const body of ['{"name":"bi a\\ud800","keyType":"aes256-gcm96"}', '{"name":"bi desc","keyType":"aes256-gcm96","description":"x\\udfffy"}']) {
      const r = await d.post('/keys', undefined, { raw: body });
      expectError(r, 400, 'ValidationError', body);
      expect(r.body.message).to.match(/surrogate/);
    }
    // A well-formed astral character (a surrogate pair) is fine.
    expect((await d.post('/keys', { name: 'bi key \u{1F511}', keyType: 'aes256-gcm96' })).status).to.equal(201);
  });

  describe('AWS KMS API', () => {
    it('a 10 MB body → 413 RequestEntityTooLargeException, answered (not a reset connection)', async () => {
      const r = await rawAwsCall(d.awsPort!, 'TrentService.Encrypt', { KeyId: 'alias/none', Plaintext: 'A'.repeat(10_000_000) }, { credential: admin });
      expect(r.status).to.equal(413);
      expect(r.body.__type).to.equal('RequestEntityTooLargeException');
      // The listener still serves the next request.
      expect((await rawAwsCall(d.awsPort!, 'TrentService.ListKeys', {}, { credential: admin })).status).to.equal(200);
    });

    it('a member of the wrong type is named as such, not as missing ("Member must not be null")', async () => {
      for (const [op, body, member] of [
        ['ListKeys', { Limit: '10' }, 'Limit'],
        ['Encrypt', { KeyId: 'alias/none', Plaintext: 5 }, 'Plaintext'],
        ['CreateKey', { Tags: {} }, 'Tags'],
      ] as const) {
        const r = await rawAwsCall(d.awsPort!, `TrentService.${op}`, body, { credential: admin });
        expect(r.status).to.equal(400);
        expect(r.body.__type).to.equal('ValidationException');
        expect(r.body.message).to.include(`'${member}'`).and.not.include('must not be null');
      }
      const absent = await rawAwsCall(d.awsPort!, 'TrentService.Encrypt', { Plaintext: 'aGk=' }, { credential: admin });
      expect(absent.body.message).to.include("'KeyId'").and.include('must not be null');
    });

    it('CreateKey with KeySpec and CustomerMasterKeySpec naming different specs → ValidationException, no key made', async () => {
      const before = await rawAwsCall(d.awsPort!, 'TrentService.ListKeys', {}, { credential: admin });
      const r = await rawAwsCall(d.awsPort!, 'TrentService.CreateKey', { KeySpec: 'ECC_NIST_P256', CustomerMasterKeySpec: 'HMAC_256', KeyUsage: 'SIGN_VERIFY' }, { credential: admin });
      expect(r.status, JSON.stringify(r.body)).to.equal(400);
      expect(r.body.__type).to.equal('ValidationException');
      const after = await rawAwsCall(d.awsPort!, 'TrentService.ListKeys', {}, { credential: admin });
      expect(after.body.Keys).to.have.length(before.body.Keys.length);
      // The same spec under both names is the same request.
      const same = await rawAwsCall(d.awsPort!, 'TrentService.CreateKey', { KeySpec: 'HMAC_256', CustomerMasterKeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC' }, { credential: admin });
      expect(same.status, JSON.stringify(same.body)).to.equal(200);
    });

    it('ListKeyRotations IncludeKeyMaterial outside its enum → ValidationException', async () => {
      const key = await rawAwsCall(d.awsPort!, 'TrentService.CreateKey', {}, { credential: admin });
      const r = await rawAwsCall(d.awsPort!, 'TrentService.ListKeyRotations', { KeyId: key.body.KeyMetadata.KeyId, IncludeKeyMaterial: 'junk' }, { credential: admin });
      expect(r.status).to.equal(400);
      expect(r.body.__type).to.equal('ValidationException');
    });

    it('validation messages are readable ASCII (no "?" where the schema had a dash)', async () => {
      const r = await rawAwsCall(d.awsPort!, 'TrentService.Encrypt', { KeyId: 'alias/none', Plaintext: 'aGk=', EncryptionContext: { '': 'x' } }, { credential: admin });
      expect(r.status).to.equal(400);
      expect(r.body.__type).to.equal('ValidationException');
      expect(r.body.message).to.not.include('?');
    });
  });
});
