import { expect } from 'chai';
import { constants, generateKeyPairSync, publicEncrypt } from 'node:crypto';
import http from 'node:http';
import { ownMongoUri } from './keys-token.js';
import { TestStack, type Daemon, type Reply } from '../helpers/stack.js';

/**
 * Faults found by replaying other KMSs' public bug reports (issue 19): one rule for usable
 * versions, per-item errors in encrypt batches, input shapes, the audit of failed operations,
 * and JSON bodies that end with a newline — each on both the fast path and Express.
 */
const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

function expectError(r: Reply, status: number, code: string, what = ''): void {
  expect(r.status, `${what} ${JSON.stringify(r.body)}`).to.equal(status);
  expect(r.body.code, `${what} ${JSON.stringify(r.body)}`).to.equal(code);
}

/** The same call, once on the fast path (plain JSON POST) and once through Express (a query string sends it there). */
const VIA = [
  { name: 'fast path', q: '' },
  { name: 'Express', q: '?via=express' },
];

/** A raw HTTP exchange, so the exact bytes of the body can be checked. */
function rawCall(d: Daemon, method: string, path: string, body?: string, headers: Record<string, string> = {}): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: d.port, method, path, headers: { ...(body !== undefined ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) } : {}), ...headers } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode!, text }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

describe('contract faults: one version rule, batch items, input shapes, failed-operation audit', function () {
  this.timeout(120_000);
  let stack: TestStack;
  let d: Daemon;
  const k: Record<string, any> = {};

  before(async () => {
    stack = await TestStack.create({ name: 'faults', mongodbUri: ownMongoUri('faults'), config: { limits: { maxBodyBytes: 65536, maxBatchItems: 10 } } });
    d = await stack.start();
    for (const [name, type, extra] of [
      ['f aes', 'aes256-gcm96', {}],
      ['f aes dest', 'aes256-gcm96', {}],
      ['f ec', 'ecdsa-p256', {}],
      ['f hmac', 'hmac-sha256', {}],
      ['f rsa', 'rsa-2048', {}],
      ['f exp', 'aes256-gcm96', { exportAllowed: true }],
    ] as const) {
      k[type === 'aes256-gcm96' ? name : type] = await d.createKey(name, type, extra);
    }
  });
  after(() => stack.cleanup());

  describe('one rule for which versions are usable', () => {
    /** Rotates to version 2 and lifts minDecryptionVersion to 2: version 1 becomes disabled. */
    async function disableV1(key: any) {
      const r1 = await d.post(`/keys/${key.identity}/rotate`);
      expect(r1.status, JSON.stringify(r1.body)).to.equal(200);
      const r2 = await d.patch(`/keys/${key.identity}`, { minDecryptionVersion: 2 });
      expect(r2.status, JSON.stringify(r2.body)).to.equal(200);
      return r2.body;
    }

    it('after minDecryptionVersion 2, version 1 is disabled everywhere: resource, encrypt, sign, hmac, re-encrypt, decrypt-asymmetric, export, public-key', async () => {
      const aes = k['f aes'];
      const dest = k['f aes dest'];
      const ec = k['ecdsa-p256'];
      const mac = k['hmac-sha256'];
      const rsa = k['rsa-2048'];
      const exp = k['f exp'];
      // Made before the change, under version 1 of the RSA key.
      const pem1 = (await d.get(`/keys/${rsa.identity}/public-key`)).body.keys['1'];
      const oaep = publicEncrypt({ key: pem1, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.from('hi')).toString('base64');
      const dest1 = (await d.post(`/keys/${dest.identity}/encrypt`, { plaintext: b64('x') })).body.ciphertext;

      for (const key of [aes, ec, mac, rsa, exp, dest]) {
        const body = await disableV1(key);
        expect(body.versions, key.keyType).to.deep.include({ version: 1, status: 'disabled', createdAt: body.versions[0].createdAt });
        expect(body.versions[1].status).to.equal('enabled');
        const got = await d.get(`/keys/${key.identity}`);
        expect(got.body.versions[0].status, 'GET key').to.equal('disabled');
        const listed = await d.get(`/keys?identity=${key.identity}`);
        expect(listed.body[0].versions[0].status, 'list keys').to.equal('disabled');
      }

      for (const v of VIA) {
                expectError(await d.post(`/keys/${aes.identity}/encrypt${v.q}`, { plaintext: 'aGVsbG8=', keyVersion: '1' }), 422, 'VersionNotAllowed', `encrypt ${v.name}`);
        expectError(await d.post(`/keys/${aes.identity}/encrypt${v.q}`, { plaintext: 'aGVsbG8=', keyVersion: 1 }), 422, 'VersionNotAllowed', `encrypt int ${v.name}`);
        expectError(await d.post(`/keys/${ec.identity}/sign${v.q}`, { input: 'aGVsbG8=', keyVersion: '1' }), 422, 'VersionNotAllowed', `sign ${v.name}`);
        expectError(await d.post(`/keys/${mac.identity}/hmac${v.q}`, { input: 'aGVsbG8=', keyVersion: '1' }), 422, 'VersionNotAllowed', `hmac ${v.name}`);
        expectError(
          await d.post(`/keys/${rsa.identity}/decrypt-asymmetric${v.q}`, { ciphertext: oaep, keyVersion: '1' }),
          422,
          'VersionNotAllowed',
          `decrypt-asymmetric ${v.name}`,
        );
        // re-encrypt destination: dest's version 1 is disabled, so a ciphertext naming it cannot be a source either.
        expectError(await d.post(`/keys/${dest.identity}/re-encrypt${v.q}`, { ciphertext: dest1 }), 422, 'VersionNotAllowed', `re-encrypt source ${v.name}`);
        // The latest (enabled) version still works.
        const ok = await d.post(`/keys/${aes.identity}/encrypt${v.q}`, { plaintext: 'aGVsbG8=', keyVersion: '2' });
        expect(ok.status).to.equal(200);
        const re = await d.post(`/keys/${aes.identity}/re-encrypt${v.q}`, { ciphertext: ok.body.ciphertext, destinationKey: dest.identity });
        expect(re.status, JSON.stringify(re.body)).to.equal(200);
        expect(re.body.keyVersion).to.equal('2');
      }

      const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
      const wrap = publicKey.export({ type: 'spki', format: 'pem' }).toString();
      expectError(await d.post(`/keys/${exp.identity}/export`, { keyVersion: '1', wrappingPublicKeyPem: wrap }), 422, 'VersionNotAllowed', 'export');
      expect((await d.post(`/keys/${exp.identity}/export`, { keyVersion: '2', wrappingPublicKeyPem: wrap })).status).to.equal(200);

      const pk = await d.get(`/keys/${ec.identity}/public-key`);
      expect(Object.keys(pk.body.keys), 'public-key lists only enabled versions').to.deep.equal(['2']);
      expectError(await d.get(`/keys/${ec.identity}/public-key?version=1`), 422, 'VersionNotAllowed', 'public-key ?version=1');
      expect((await d.get(`/keys/${ec.identity}/public-key?version=2`)).status).to.equal(200);

      // Lowering the minimum again re-enables version 1 everywhere.
      expect((await d.patch(`/keys/${aes.identity}`, { minDecryptionVersion: 1 })).body.versions[0].status).to.equal('enabled');
      expect((await d.post(`/keys/${aes.identity}/encrypt`, { plaintext: 'aGVsbG8=', keyVersion: '1' })).status).to.equal(200);
    });
  });

  describe('encrypt batch: a bad item is an error item, the others are served', () => {
    for (const v of VIA)
      it(`bad base64, missing plaintext, wrong types, unknown fields → {error} in their slots (${v.name})`, async () => {
        const key = k['f aes dest'];
        const r = await d.post(
          `/keys/${key.identity}/encrypt${v.q}`,
          { batch: [{ plaintext: 'YQ==' }, { plaintext: '***' }, {}, { plaintext: 'Yg==' }, { plaintext: 5 }, { plaintext: 'Yw==', aad: '!' }, { plaintext: 'ZA==', x: 1 }, 'str'] },
        );
        expect(r.status, JSON.stringify(r.body)).to.equal(200);
        const items = r.body.batch;
        expect(items).to.have.length(8);
        for (const i of [1, 2, 4, 5, 6, 7]) {
          expect(items[i], `item ${i}`).to.have.keys('error');
          expect(items[i].error.code, `item ${i}`).to.equal('ValidationError');
          expect(items[i].error.message).to.be.a('string').and.not.equal('');
        }
        const dec = await d.post(`/keys/${key.identity}/decrypt`, { batch: [items[0], items[3]].map((x: any) => ({ ciphertext: x.ciphertext })) });
        expect(dec.body.batch.map((x: any) => x.plaintext)).to.deep.equal(['YQ==', 'Yg==']);
      });

    it('a malformed envelope is still a 400: no array, more than maxBatchItems', async () => {
      const key = k['f aes dest'];
      expectError(await d.post(`/keys/${key.identity}/encrypt`, { batch: 'x' }), 400, 'ValidationError');
      expectError(await d.post(`/keys/${key.identity}/encrypt`, { batch: Array.from({ length: 11 }, () => ({ plaintext: 'YQ==' })) }), 400, 'ValidationError');
      expectError(await d.post(`/keys/${key.identity}/decrypt`, { batch: 'x' }), 400, 'ValidationError');
    });
  });

  describe('required fields and shapes', () => {
    it('decrypt-asymmetric without keyVersion → 400 ValidationError naming keyVersion (both paths)', async () => {
      const rsa = k['rsa-2048'];
      const pem = (await d.get(`/keys/${rsa.identity}/public-key`)).body.keys['2'];
      const ct = publicEncrypt({ key: pem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.from('hi')).toString('base64');
      for (const v of VIA) {
        const r = await d.post(`/keys/${rsa.identity}/decrypt-asymmetric${v.q}`, { ciphertext: ct });
        expectError(r, 400, 'ValidationError', v.name);
        expect(r.body.message).to.include('keyVersion');
      }
      const ok = await d.post(`/keys/${rsa.identity}/decrypt-asymmetric`, { ciphertext: ct, keyVersion: '2' });
      expect(ok.body.plaintext).to.equal(b64('hi'));
    });

    it('key names with control characters → 400 ValidationError', async () => {
      for (const name of ['x\u0000y', 'a\tb', 'line\nbreak', 'del\u007f', 'esc\u001b[0m']) {
        const r = await d.post('/keys', { name, keyType: 'aes256-gcm96' });
        expectError(r, 400, 'ValidationError', JSON.stringify(name));
        expect(r.body.message).to.include('name');
      }
      expect((await d.post('/keys', { name: 'spaces and ünïcode are fine', keyType: 'aes256-gcm96' })).status).to.equal(201);
    });

    it('labels and annotations named __proto__ and constructor are stored and returned exactly as sent', async () => {
      const labels = JSON.parse('{"__proto__":"p","constructor":"c","toString":"t","env":"prod"}');
      const annotations = JSON.parse('{"__proto__":"ap","hasOwnProperty":"h"}');
      const created = await rawCall(d, 'POST', '/v1/kms/nl-01/keys', JSON.stringify({ name: 'proto labels', keyType: 'aes256-gcm96', labels, annotations }), {
        authorization: `Bearer ${stack.token()}`,
        'x-organisation-identity': 'org-test',
      });
      expect(created.status, created.text).to.equal(201);
      expect(created.text).to.include('"__proto__":"p"');
      expect(created.text).to.include('"__proto__":"ap"');
      const body = JSON.parse(created.text);
      expect(Object.entries(body.labels)).to.deep.equal(Object.entries(labels));
      expect(Object.entries(body.annotations)).to.deep.equal(Object.entries(annotations));
      // After a restart (read back from the store) they are still all there.
      await stack.stopAll();
      stack.daemons.length = 0;
      d = await stack.start();
      const got = await rawCall(d, 'GET', `/v1/kms/nl-01/keys/${body.identity}`, undefined, { authorization: `Bearer ${stack.token()}`, 'x-organisation-identity': 'org-test' });
      expect(got.text).to.include('"__proto__":"p"');
      expect(Object.entries(JSON.parse(got.text).labels)).to.deep.equal(Object.entries(labels));
      // The filter matches them too, and an own label is never confused with an inherited property.
      const byProto = await d.get('/keys?matchLabels[__proto__]=p');
      expect(byProto.body.map((x: any) => x.identity)).to.deep.equal([body.identity]);
      const byCtor = await d.get('/keys?matchLabels[constructor]=c&matchLabels[env]=prod');
      expect(byCtor.body.map((x: any) => x.identity)).to.deep.equal([body.identity]);
      const others = await d.get(`/keys?matchLabels[toString]=${encodeURIComponent('function toString() { [native code] }')}`);
      expect(others.body).to.deep.equal([]);
    });

    it('GET /keys?matchLabels in any shape but matchLabels[k]=v → 400 ValidationError', async () => {
      for (const q of ['matchLabels=x', 'matchLabels=', 'matchLabels[a][b]=c', 'matchLabels[]=x', 'matchLabels[a]=1&matchLabels[a]=2']) {
        const r = await d.get(`/keys?${q}`);
        expectError(r, 400, 'ValidationError', q);
      }
      expect((await d.get('/keys?matchLabels[env]=prod')).status).to.equal(200);
    });
  });

  describe('audit of failed operations names the version the input named', () => {
    it('tampered decrypt, wrong-version verify and verify-hmac, single and batch', async () => {
      const aes = k['f aes dest'];
      const ct = (await d.post(`/keys/${aes.identity}/encrypt`, { plaintext: b64('secret') })).body.ciphertext as string;
      const [, ver, data] = /^kms:v(\d+):(.*)$/.exec(ct)!;
      const raw = Buffer.from(data!, 'base64');
      raw[raw.length - 1]! ^= 1;
      const tampered = `kms:v${ver}:${raw.toString('base64')}`;
      for (const v of VIA) {
        const id = `faults-audit-dec-${v.name.replace(' ', '-')}`;
        expectError(await d.post(`/keys/${aes.identity}/decrypt${v.q}`, { ciphertext: tampered }, { headers: { 'x-request-id': id } }), 422, 'DecryptionFailed');
        const ev = (await d.get(`/audit?keyIdentity=${aes.identity}&action=kms.decrypt`)).body.events.find((e: any) => e.requestId === id);
        expect(ev, v.name).to.include({ outcome: 'failure', keyVersion: ver });
      }
      // A version below the minimum (key f aes: v1 disabled earlier, then re-enabled; disable again).
      const ec = k['ecdsa-p256'];
      const sig1 = (await d.post(`/keys/${ec.identity}/sign`, { input: 'aGVsbG8=', keyVersion: '2' })).body.signature as string;
      const rot = await d.post(`/keys/${ec.identity}/rotate`);
      expect(rot.status).to.equal(200);
      await d.patch(`/keys/${ec.identity}`, { minDecryptionVersion: 3 });
      expectError(await d.post(`/keys/${ec.identity}/verify`, { input: 'aGVsbG8=', signature: sig1 }, { headers: { 'x-request-id': 'faults-audit-verify' } }), 422, 'VersionNotAllowed');
      const vev = (await d.get(`/audit?keyIdentity=${ec.identity}&action=kms.verify`)).body.events.find((e: any) => e.requestId === 'faults-audit-verify');
      expect(vev).to.include({ outcome: 'failure', keyVersion: '2' });

      const mac = k['hmac-sha256'];
      expectError(await d.post(`/keys/${mac.identity}/verify-hmac`, { input: 'aGVsbG8=', hmac: 'kms:v1:AAAA' }, { headers: { 'x-request-id': 'faults-audit-vh' } }), 422, 'VersionNotAllowed');
      const hev = (await d.get(`/audit?keyIdentity=${mac.identity}&action=kms.verify-hmac`)).body.events.find((e: any) => e.requestId === 'faults-audit-vh');
      expect(hev).to.include({ outcome: 'failure', keyVersion: '1' });

      // re-encrypt of a tampered source names the source version.
      expectError(await d.post(`/keys/${aes.identity}/re-encrypt`, { ciphertext: tampered }, { headers: { 'x-request-id': 'faults-audit-re' } }), 422, 'DecryptionFailed');
      const rev = (await d.get(`/audit?keyIdentity=${aes.identity}&action=kms.re-encrypt`)).body.events.find((e: any) => e.requestId === 'faults-audit-re');
      expect(rev).to.include({ outcome: 'failure', keyVersion: ver });

      // A batch whose items fail: the record names the versions the failed items named.
      const r = await d.post(`/keys/${aes.identity}/decrypt`, { batch: [{ ciphertext: tampered }, { ciphertext: ct }] }, { headers: { 'x-request-id': 'faults-audit-batch' } });
      expect(r.status).to.equal(200);
      expect(r.body.batch[0].error.code).to.equal('DecryptionFailed');
      const bev = (await d.get(`/audit?keyIdentity=${aes.identity}&action=kms.decrypt`)).body.events.find((e: any) => e.requestId === 'faults-audit-batch');
      expect(bev.keyVersion).to.equal(ver);
      expect(bev.detail).to.deep.include({ batch: 2, failed: [{ index: 0, code: 'DecryptionFailed', keyVersion: ver }] });
    });
  });

  describe('JSON bodies end with a newline', () => {
    it('on /readyz, /healthz, Express and fast-path replies, errors and 404s', async () => {
      const auth = { authorization: `Bearer ${stack.token()}`, 'x-organisation-identity': 'org-test' };
      const aes = k['f aes dest'];
      const cases = [
        await rawCall(d, 'GET', '/readyz'),
        await rawCall(d, 'GET', '/healthz'),
        await rawCall(d, 'GET', '/no/such/route'),
        await rawCall(d, 'GET', '/v1/kms/nl-01/keys', undefined, auth),
        await rawCall(d, 'POST', `/v1/kms/nl-01/keys/${aes.identity}/encrypt`, '{"plaintext":"YQ=="}', auth),
        await rawCall(d, 'POST', `/v1/kms/nl-01/keys/${aes.identity}/encrypt?via=express`, '{"plaintext":"YQ=="}', auth),
        await rawCall(d, 'POST', `/v1/kms/nl-01/keys/${aes.identity}/encrypt?via=express`, '{"plaintext":"YQ==",', auth),
        await rawCall(d, 'POST', `/v1/kms/nl-01/keys/${aes.identity}/encrypt`, '{bad json', auth),
        await rawCall(d, 'POST', `/v1/kms/nl-01/keys/${aes.identity}/encrypt`, '{"plaintext":"YQ=="}'),
      ];
      for (const c of cases) {
        expect(c.text.endsWith('\n'), c.text).to.equal(true);
        JSON.parse(c.text);
      }
    });
  });
});
