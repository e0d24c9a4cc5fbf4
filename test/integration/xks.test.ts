import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { cdivSha256 } from '../../src/xks/wire.js';
import { sql } from '../helpers/sqlite.js';
import { ORG, TestStack, type Daemon } from '../helpers/stack.js';
import {
  curlCall,
  makePki,
  newCredential,
  requestMetadata,
  xksCall,
  type TestPki,
  type XksCallOptions,
  type XksReply,
  type XksTarget,
} from '../helpers/xks.js';

const SECRET_ENV = 'KMSD_TEST_XKS_SECRET_A';
const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

function expectError(r: XksReply, status: number, errorName: string): void {
  expect(r.status, JSON.stringify(r.body)).to.equal(status);
  expect(r.body.errorName).to.equal(errorName);
  expect(r.body.errorMessage).to.match(/^[\x20-\x7e]{0,511}$/);
}

describe('XKS proxy: AWS KMS External Key Store over the real token', () => {
  let stack: TestStack;
  let pki: TestPki;
  const credA = newCredential(); // from an env variable
  const credB = newCredential(); // from a file
  const credOther = newCredential();
  const stranger = newCredential();
  let secretFileB: string;

  /** The xks block: five keystores exercising prefix, project, disabled org and a down token. */
  function xksConfig(o: { tls?: Record<string, string>; mainCredentials: 'both' | 'onlyB' }) {
    const a = { accessKeyId: credA.accessKeyId, secretAccessKeyEnv: SECRET_ENV };
    const b = { accessKeyId: credB.accessKeyId, secretAccessKeyFile: secretFileB };
    return {
      listen: { host: '127.0.0.1', port: 0 },
      ...(o.tls ? { tls: o.tls } : {}),
      keystores: [
        { uriPrefix: 'tenant-a/xks', organisation: ORG, region: 'nl-01', sigv4Region: 'us-east-1', credentials: o.mainCredentials === 'both' ? [a, b] : [b] },
        {
          uriPrefix: '',
          organisation: 'org-other',
          region: 'nl-01',
          sigv4Region: 'eu-west-1',
          credentials: [{ accessKeyId: credOther.accessKeyId, secretAccessKeyFile: path.join(stack.dir, 'other.secret') }],
        },
        { uriPrefix: 'tenant-a/project', organisation: ORG, region: 'nl-01', project: 'p1', sigv4Region: 'us-east-1', credentials: [b] },
        { uriPrefix: 'off', organisation: 'org-off', region: 'nl-01', sigv4Region: 'us-east-1', credentials: [b] },
        { uriPrefix: 'down', organisation: ORG, region: 'de-01', sigv4Region: 'us-east-1', credentials: [b] },
      ],
    };
  }

  before(async () => {
    // de-01's token is never created: that region stays unavailable (the "HSM down" keystore).
    stack = await TestStack.create({ name: 'xks', regions: ['nl-01', 'de-01'], tokens: ['kmsd-nl-01'] });
    pki = makePki(path.join(stack.dir, 'pki'));
    process.env[SECRET_ENV] = credA.secretAccessKey;
    secretFileB = path.join(stack.dir, 'b.secret');
    writeFileSync(secretFileB, `${credB.secretAccessKey}\n`);
    writeFileSync(path.join(stack.dir, 'other.secret'), credOther.secretAccessKey);
  });
  after(async () => {
    await stack.cleanup();
    delete process.env[SECRET_ENV];
  });

  describe('over HTTPS with two credentials per keystore', () => {
    let d: Daemon;
    let target: XksTarget;
    const keys: Record<string, { identity: string }> = {};
    const main = (p: string) => `/tenant-a/xks/kms/xks/v1${p}`;
    const call = (p: string, body: unknown, o: XksCallOptions = {}) => xksCall(target, p, body, { credential: credA, ...o });
    const encryptBody = (plaintext: Buffer, extra: Record<string, unknown> = {}) => ({
      requestMetadata: requestMetadata('Encrypt'),
      plaintext: plaintext.toString('base64'),
      encryptionAlgorithm: 'AES_GCM',
      ...extra,
    });
    const decryptBody = (enc: Record<string, string>, extra: Record<string, unknown> = {}) => ({
      requestMetadata: requestMetadata('Decrypt'),
      ciphertext: enc.ciphertext,
      ciphertextMetadata: enc.ciphertextMetadata,
      initializationVector: enc.initializationVector,
      authenticationTag: enc.authenticationTag,
      encryptionAlgorithm: 'AES_GCM',
      ...extra,
    });
    const marker = `xks-secret-plaintext-${randomBytes(6).toString('hex')}`;

    before(async () => {
      d = await stack.start({
        xks: xksConfig({ tls: { certFile: pki.serverCert, keyFile: pki.serverKey }, mainCredentials: 'both' }),
        logLevel: 'debug',
      });
      expect(d.xksPort, 'daemon reports its XKS port').to.be.a('number');
      target = { port: d.xksPort!, tls: { ca: pki.caCert } };
      keys.main = await d.createKey('xks-main', 'aes256-gcm96');
      keys.rot = await d.createKey('xks-rot', 'aes256-gcm96');
      keys.second = await d.createKey('xks-second', 'aes256-gcm96');
      keys.off = await d.createKey('xks-disabled', 'aes256-gcm96');
      keys.hmac = await d.createKey('xks-hmac', 'hmac-sha256');
      keys.ed = await d.createKey('xks-ed', 'ed25519');
      keys.aes128 = await d.createKey('xks-128', 'aes128-gcm96');
      keys.project = await d.createKey('xks-proj', 'aes256-gcm96', {}, { project: 'p1' });
    });
    after(() => d.stop());

    describe('GetHealthStatus', () => {
      it('reports the proxy and an ACTIVE token, signed by the SDK signer', async () => {
        const r = await call(main('/health'), { requestMetadata: { kmsRequestId: 'h-1', kmsOperation: 'KmsHealthCheck' } });
        expect(r.status).to.equal(200);
        expect(r.headers['content-type']).to.match(/^application\/json/);
        expect(r.body.xksProxyFleetSize).to.equal(1);
        expect(r.body.xksProxyVendor).to.equal('kmsd');
        expect(r.body.xksProxyModel).to.match(/^kmsd /);
        expect(r.body.ekmVendor).to.match(/SoftHSM/);
        expect(r.body.ekmFleetDetails).to.have.length(1);
        expect(r.body.ekmFleetDetails[0].healthStatus).to.equal('ACTIVE');
        expect(r.body.ekmFleetDetails[0].id).to.match(/^nl-01\//);
      });

      it('answers a request signed by curl --aws-sigv4 (independent signer)', () => {
        const r = curlCall(target, main('/health'), { requestMetadata: { kmsRequestId: 'h-2', kmsOperation: 'CreateCustomKeyStore' } }, credA, {
          tmpDir: stack.dir,
        });
        expect(r.status).to.equal(200);
        expect(r.body.ekmFleetDetails[0].healthStatus).to.equal('ACTIVE');
      });

      it('accepts the second credential of the keystore (rotation: both pairs at once)', async () => {
        const r = await call(main('/health'), { requestMetadata: { kmsRequestId: 'h-3', kmsOperation: 'KmsHealthCheck' } }, { credential: credB });
        expect(r.status).to.equal(200);
        const c = curlCall(target, main('/health'), { requestMetadata: { kmsRequestId: 'h-4', kmsOperation: 'KmsHealthCheck' } }, credB, { tmpDir: stack.dir });
        expect(c.status).to.equal(200);
      });

      it('serves a keystore with no prefix and its own SigV4 region', async () => {
        const body = { requestMetadata: { kmsRequestId: 'h-5', kmsOperation: 'KmsHealthCheck' } };
        expect((await xksCall(target, '/kms/xks/v1/health', body, { credential: credOther, region: 'eu-west-1' })).status).to.equal(200);
        expect(curlCall(target, '/kms/xks/v1/health', body, credOther, { region: 'eu-west-1', tmpDir: stack.dir }).status).to.equal(200);
      });

      it('rejects missing or empty requestMetadata with ValidationException', async () => {
        expectError(await call(main('/health'), {}), 400, 'ValidationException');
        expectError(await call(main('/health'), { requestMetadata: {} }), 400, 'ValidationException');
      });

      it('reports the down token UNAVAILABLE; key operations there are 503 DependencyTimeoutException', async () => {
        const h = await call('/down/kms/xks/v1/health', { requestMetadata: { kmsRequestId: 'h-6', kmsOperation: 'KmsHealthCheck' } }, { credential: credB });
        expect(h.status).to.equal(200);
        expect(h.body.ekmFleetDetails[0].healthStatus).to.equal('UNAVAILABLE');
        expectError(await call('/down/kms/xks/v1/keys/anything/encrypt', encryptBody(Buffer.from('x')), { credential: credB }), 503, 'DependencyTimeoutException');
        expectError(
          await call('/down/kms/xks/v1/keys/anything/metadata', { requestMetadata: requestMetadata('DescribeKey') }, { credential: credB }),
          503,
          'DependencyTimeoutException',
        );
      });

      it('refuses a keystore of an organisation without KMS with InvalidStateException', async () => {
        const r = await call('/off/kms/xks/v1/health', { requestMetadata: { kmsRequestId: 'h-7', kmsOperation: 'KmsHealthCheck' } }, { credential: credB });
        expectError(r, 400, 'InvalidStateException');
      });
    });

    describe('GetKeyMetadata', () => {
      it('describes an AES-256 key by slug and by identity', async () => {
        for (const id of ['xks-main', keys.main!.identity]) {
          const r = await call(main(`/keys/${id}/metadata`), { requestMetadata: requestMetadata('DescribeKey') });
          expect(r.status).to.equal(200);
          expect(r.body).to.deep.equal({ keySpec: 'AES_256', keyUsage: ['ENCRYPT', 'DECRYPT'], keyStatus: 'ENABLED' });
        }
      });

      it('accepts CreateKey metadata without kmsKeyArn (spec: optional there)', async () => {
        const md = requestMetadata('CreateKey') as Record<string, string>;
        delete md.kmsKeyArn;
        const r = curlCall(target, main('/keys/xks-main/metadata'), { requestMetadata: md }, credA, { tmpDir: stack.dir });
        expect(r.status).to.equal(200);
        expect(r.body.keySpec).to.equal('AES_256');
      });

      it('reports other key types with their own spec and no ENCRYPT/DECRYPT', async () => {
        const expected: Record<string, string> = { 'xks-hmac': 'HMAC_256', 'xks-ed': 'ECC_NIST_EDWARDS25519', 'xks-128': 'AES_128' };
        for (const [id, spec] of Object.entries(expected)) {
          const r = await call(main(`/keys/${id}/metadata`), { requestMetadata: requestMetadata('DescribeKey') });
          expect(r.status).to.equal(200);
          expect(r.body.keySpec).to.equal(spec);
          expect(r.body.keyUsage).to.not.include('ENCRYPT');
          expect(r.body.keyUsage).to.not.include('DECRYPT');
        }
      });

      it('answers KeyNotFoundException for unknown ids, ids of other scopes, and odd ids', async () => {
        for (const id of ['no-such-key', 'kms-00000000000000000000', 'a'.repeat(128), 'xks-proj', 'x'.repeat(129), 'bad%20id']) {
          const r = await call(main(`/keys/${id}/metadata`), { requestMetadata: requestMetadata('DescribeKey') });
          expectError(r, 404, 'KeyNotFoundException');
        }
        // org-other's keystore cannot see org-test keys, but sees its own default key.
        const other = (id: string) => xksCall(target, `/kms/xks/v1/keys/${id}/metadata`, { requestMetadata: requestMetadata('DescribeKey') }, { credential: credOther, region: 'eu-west-1' });
        expectError(await other(keys.main!.identity), 404, 'KeyNotFoundException');
        expect((await other('default')).body.keySpec).to.equal('AES_256');
      });

      it('finds project keys only through the project-scoped keystore', async () => {
        const r = await call('/tenant-a/project/kms/xks/v1/keys/xks-proj/metadata', { requestMetadata: requestMetadata('DescribeKey') }, { credential: credB });
        expect(r.status).to.equal(200);
        expectError(
          await call('/tenant-a/project/kms/xks/v1/keys/xks-main/metadata', { requestMetadata: requestMetadata('DescribeKey') }, { credential: credB }),
          404,
          'KeyNotFoundException',
        );
      });

      it('requires awsPrincipalArn (ValidationException)', async () => {
        const md = requestMetadata('DescribeKey') as Record<string, string>;
        delete md.awsPrincipalArn;
        expectError(await call(main('/keys/xks-main/metadata'), { requestMetadata: md }), 400, 'ValidationException');
      });
    });

    describe('Encrypt and Decrypt', () => {
      it('round-trips: curl encrypts, the SDK signer decrypts, with AAD', async () => {
        const aad = Buffer.from('project=nile,department=marketing');
        const enc = curlCall(target, main('/keys/xks-main/encrypt'), encryptBody(Buffer.from(marker), { additionalAuthenticatedData: b64(aad) }), credA, {
          tmpDir: stack.dir,
        });
        expect(enc.status).to.equal(200);
        expect(Buffer.from(enc.body.ciphertext, 'base64')).to.have.length(marker.length);
        expect(Buffer.from(enc.body.initializationVector, 'base64')).to.have.length(12);
        expect(Buffer.from(enc.body.authenticationTag, 'base64')).to.have.length(16);
        expect(Buffer.from(enc.body.ciphertextMetadata, 'base64').length).to.be.at.most(20);
        expect(enc.body).to.not.have.property('ciphertextDataIntegrityValue');
        const dec = await call(main('/keys/xks-main/decrypt'), decryptBody(enc.body, { additionalAuthenticatedData: b64(aad) }));
        expect(dec.status).to.equal(200);
        expect(Buffer.from(dec.body.plaintext, 'base64').toString()).to.equal(marker);
        expect(Object.keys(dec.body)).to.deep.equal(['plaintext']);
      });

      it('round-trips the spec-size maxima: 4,300 bytes of plaintext with 8,192 bytes of AAD', async () => {
        const pt = randomBytes(4300);
        const aad = b64(randomBytes(8192));
        const enc = await call(main('/keys/xks-main/encrypt'), encryptBody(pt, { additionalAuthenticatedData: aad }));
        expect(enc.status).to.equal(200);
        const dec = curlCall(target, main('/keys/xks-main/decrypt'), decryptBody(enc.body, { additionalAuthenticatedData: aad }), credA, { tmpDir: stack.dir });
        expect(dec.status).to.equal(200);
        expect(Buffer.from(dec.body.plaintext, 'base64').equals(pt)).to.equal(true);
      });

      it('returns a CDIV equal to SHA-256(AAD ‖ metadata ‖ IV ‖ ciphertext ‖ tag), with and without AAD', async () => {
        for (const aad of [Buffer.from('context-bytes'), undefined]) {
          const extra: Record<string, unknown> = { ciphertextDataIntegrityValueAlgorithm: 'SHA_256' };
          if (aad) extra.additionalAuthenticatedData = b64(aad);
          const r = await call(main('/keys/xks-main/encrypt'), encryptBody(Buffer.from('data key bytes'), extra));
          expect(r.status).to.equal(200);
          const parts = ['ciphertextMetadata', 'initializationVector', 'ciphertext', 'authenticationTag'].map((f) => Buffer.from(r.body[f], 'base64'));
          const expected = createHash('sha256')
            .update(Buffer.concat([aad ?? Buffer.alloc(0), ...parts]))
            .digest('base64');
          expect(r.body.ciphertextDataIntegrityValue).to.equal(expected);
        }
      });

      it('computes the CDIV of the spec Appendix C example', () => {
        const hex = (s: string) => Buffer.from(s.replace(/\s/g, ''), 'hex');
        const cdiv = cdivSha256(
          Buffer.from('project=nile,department=marketing'),
          Buffer.from('key_version=1'),
          hex('1ccae5470f39700254779031'),
          hex('821c642b5b71783367deaf18'),
          hex('bc1c4dda7707d6812447c5955e99b261'),
        );
        expect(cdiv.toString('base64')).to.equal('qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc=');
      });

      it('decrypts a ciphertext made before a kmsd rotation (ciphertextMetadata carries the version)', async () => {
        const before = await call(main('/keys/xks-rot/encrypt'), encryptBody(Buffer.from('before rotation')));
        expect(before.status).to.equal(200);
        const rotated = await d.post('/keys/xks-rot/rotate');
        expect(rotated.status).to.equal(200);
        expect(rotated.body.latestVersion).to.equal(2);
        const after = await call(main('/keys/xks-rot/encrypt'), encryptBody(Buffer.from('after rotation')));
        expect(after.body.ciphertextMetadata).to.not.equal(before.body.ciphertextMetadata);
        for (const [enc, text] of [
          [before.body, 'before rotation'],
          [after.body, 'after rotation'],
        ] as const) {
          const dec = await call(main('/keys/xks-rot/decrypt'), decryptBody(enc));
          expect(dec.status, JSON.stringify(dec.body)).to.equal(200);
          expect(Buffer.from(dec.body.plaintext, 'base64').toString()).to.equal(text);
        }
        // Version 1 below minDecryptionVersion: key state, not a corrupt ciphertext.
        expect((await d.patch('/keys/xks-rot', { minDecryptionVersion: 2 })).status).to.equal(200);
        expectError(await call(main('/keys/xks-rot/decrypt'), decryptBody(before.body)), 400, 'InvalidStateException');
      });

      it('rejects wrong AAD, IV, tag, ciphertext or metadata with InvalidCiphertextException', async () => {
        const aad = b64('right aad');
        const enc = (await call(main('/keys/xks-main/encrypt'), encryptBody(Buffer.from('secret'), { additionalAuthenticatedData: aad }))).body;
        const flip = (s: string, byte = 0) => {
          const b = Buffer.from(s, 'base64');
          b[byte]! ^= 1;
          return b.toString('base64');
        };
        const metaV2 = Buffer.from(enc.ciphertextMetadata, 'base64');
        metaV2.writeUInt32BE(2, 1);
        const cases: Record<string, unknown>[] = [
          { additionalAuthenticatedData: b64('wrong aad') },
          { additionalAuthenticatedData: undefined }, // AAD missing
          { initializationVector: flip(enc.initializationVector) },
          { authenticationTag: flip(enc.authenticationTag, 15) },
          { ciphertext: flip(enc.ciphertext) },
          { ciphertextMetadata: flip(enc.ciphertextMetadata, 4) }, // names version 0 / another version
          { ciphertextMetadata: metaV2.toString('base64') }, // a version the key does not have
          { ciphertextMetadata: undefined },
          // metadata moved into the AAD: the lengths in the GCM AAD keep this from decrypting
          { ciphertextMetadata: b64(''), additionalAuthenticatedData: b64(Buffer.concat([Buffer.from('right aad'), Buffer.from(enc.ciphertextMetadata, 'base64')])) },
          { initializationVector: b64(randomBytes(16)) },
          { authenticationTag: b64(randomBytes(12)) },
          { initializationVector: undefined },
          { ciphertext: 'not base64!' },
        ];
        for (const c of cases) {
          const body = decryptBody(enc, { additionalAuthenticatedData: aad, ...c });
          const r = await call(main('/keys/xks-main/decrypt'), body);
          expectError(r, 400, 'InvalidCiphertextException');
        }
        // and the untampered request still works
        expect((await call(main('/keys/xks-main/decrypt'), decryptBody(enc, { additionalAuthenticatedData: aad }))).status).to.equal(200);
      });

      it('does not decrypt under another key', async () => {
        const enc = (await call(main('/keys/xks-main/encrypt'), encryptBody(Buffer.from('k1')))).body;
        expectError(await call(main('/keys/xks-second/decrypt'), decryptBody(enc)), 400, 'InvalidCiphertextException');
      });

      it('rejects bad encrypt input with ValidationException', async () => {
        const md = requestMetadata('Encrypt');
        const bad: unknown[] = [
          { requestMetadata: md, encryptionAlgorithm: 'AES_GCM' }, // plaintext missing
          { requestMetadata: md, plaintext: 'not base64!', encryptionAlgorithm: 'AES_GCM' },
          { requestMetadata: md, plaintext: '', encryptionAlgorithm: 'AES_GCM' },
          { requestMetadata: md, plaintext: b64('x') }, // encryptionAlgorithm missing
          { requestMetadata: md, plaintext: b64('x'), encryptionAlgorithm: 'AES_CBC' },
          { requestMetadata: md, plaintext: b64('x'), encryptionAlgorithm: 'AES_GCM', ciphertextDataIntegrityValueAlgorithm: 'MD5' },
          { requestMetadata: md, plaintext: b64('x'), encryptionAlgorithm: 'AES_GCM', additionalAuthenticatedData: 42 },
          { plaintext: b64('x'), encryptionAlgorithm: 'AES_GCM' }, // requestMetadata missing
          { requestMetadata: {}, plaintext: b64('x'), encryptionAlgorithm: 'AES_GCM' },
          { requestMetadata: { ...md, kmsKeyArn: undefined }, plaintext: b64('x'), encryptionAlgorithm: 'AES_GCM' },
          '{"requestMetadata": ',
          '[1, 2]',
        ];
        for (const body of bad) expectError(await call(main('/keys/xks-main/encrypt'), body), 400, 'ValidationException');
      });

      it('accepts unknown kmsOperation values and extra requestMetadata fields', async () => {
        const md = requestMetadata('BulkEncryptOfTheFuture', { awsSourceVpc: 'vpc-1', awsSourceVpce: 'vpce-1', kmsViaService: 'ebs', newField: 'x' });
        const r = await call(main('/keys/xks-main/encrypt'), { requestMetadata: md, plaintext: b64('x'), encryptionAlgorithm: 'AES_GCM' });
        expect(r.status).to.equal(200);
      });

      it('refuses non-AES-256 keys with InvalidKeyUsageException', async () => {
        for (const id of ['xks-hmac', 'xks-ed', 'xks-128']) {
          expectError(await call(main(`/keys/${id}/encrypt`), encryptBody(Buffer.from('x'))), 400, 'InvalidKeyUsageException');
          const fake = { ciphertext: b64('x'), ciphertextMetadata: b64(Buffer.from([1, 0, 0, 0, 1])), initializationVector: b64(randomBytes(12)), authenticationTag: b64(randomBytes(16)) };
          expectError(await call(main(`/keys/${id}/decrypt`), decryptBody(fake)), 400, 'InvalidKeyUsageException');
        }
      });

      it('answers KeyNotFoundException on encrypt/decrypt of unknown keys', async () => {
        expectError(await call(main('/keys/nope/encrypt'), encryptBody(Buffer.from('x'))), 404, 'KeyNotFoundException');
        const fake = { ciphertext: b64('x'), ciphertextMetadata: b64(Buffer.from([1, 0, 0, 0, 1])), initializationVector: b64(randomBytes(12)), authenticationTag: b64(randomBytes(16)) };
        expectError(await call(main('/keys/nope/decrypt'), decryptBody(fake)), 404, 'KeyNotFoundException');
      });

      it('refuses a disabled key with InvalidStateException while metadata says DISABLED', async () => {
        const enc = await call(main('/keys/xks-disabled/encrypt'), encryptBody(Buffer.from('while enabled')));
        expect(enc.status).to.equal(200);
        expect((await d.post('/keys/xks-disabled/disable')).status).to.equal(200);
        const md = await call(main('/keys/xks-disabled/metadata'), { requestMetadata: requestMetadata('DescribeKey') });
        expect(md.status).to.equal(200);
        expect(md.body.keyStatus).to.equal('DISABLED');
        expectError(await call(main('/keys/xks-disabled/encrypt'), encryptBody(Buffer.from('x'))), 400, 'InvalidStateException');
        expectError(await call(main('/keys/xks-disabled/decrypt'), decryptBody(enc.body)), 400, 'InvalidStateException');
        expect((await d.post('/keys/xks-disabled/enable')).status).to.equal(200);
        expect((await call(main('/keys/xks-disabled/decrypt'), decryptBody(enc.body))).status).to.equal(200);
      });

      it('answers an oversized body with UnsupportedOperationException', async () => {
        const r = await call(main('/keys/xks-main/encrypt'), encryptBody(randomBytes(200 * 1024)));
        expectError(r, 501, 'UnsupportedOperationException');
      });

      it('answers a 10 MB body (past the point where reading stops) with UnsupportedOperationException, not a reset connection', async () => {
        const r = await call(main('/keys/xks-main/encrypt'), encryptBody(Buffer.alloc(7_500_000, 1)));
        expectError(r, 501, 'UnsupportedOperationException');
        // The listener still serves the next request.
        expect((await call(main('/keys/xks-main/encrypt'), encryptBody(Buffer.from('after')))).status).to.equal(200);
      });
    });

    describe('routes and authentication', () => {
      const health = () => ({ requestMetadata: { kmsRequestId: 'r-1', kmsOperation: 'KmsHealthCheck' } });

      it('answers InvalidUriPathException for unknown prefixes and paths', async () => {
        for (const p of ['/nope/kms/xks/v1/health', '/tenant-a/kms/xks/v1/health', main('/keys/xks-main/sign'), main('/keys/xks-main'), main('/health/'), '/', main('/keys//encrypt')])
          expectError(await call(p, health()), 404, 'InvalidUriPathException');
      });

      it('answers 405 to GET on an operation', async () => {
        for (const p of [main('/health'), main('/keys/xks-main/encrypt'), '/nope/kms/xks/v1/keys/x/metadata']) {
          const r = await call(p, '', { method: 'GET' });
          expect(r.status).to.equal(405);
          expect(r.headers.allow).to.equal('POST');
        }
      });

      it('refuses unsigned, mis-signed and stale requests with AuthenticationFailedException', async () => {
        const sixMinutes = 6 * 60_000;
        const cases: XksCallOptions[] = [
          { unsigned: true },
          { credential: stranger }, // unknown access key id
          { credential: { accessKeyId: credA.accessKeyId, secretAccessKey: credB.secretAccessKey } }, // wrong secret
          { credential: credOther, region: 'eu-west-1' }, // another keystore's credential
          { region: 'eu-west-1' }, // wrong SigV4 region
          { service: 'kms' }, // wrong service
          { signingDate: new Date(Date.now() - sixMinutes) },
          { signingDate: new Date(Date.now() + sixMinutes) },
          { sendBody: JSON.stringify({ requestMetadata: { kmsRequestId: 'r-2', kmsOperation: 'KmsHealthCheck' } }) }, // body swapped after signing
          { authorization: (a) => a.replace(/Signature=[0-9a-f]{4}/, 'Signature=0000') },
          { authorization: (a) => a.replace('SignedHeaders=content-type;host;x-amz-date', 'SignedHeaders=content-type;host') },
          { authorization: () => 'AWS4-HMAC-SHA256 garbage' },
          { authorization: (a) => a.replace('AWS4-HMAC-SHA256', 'AWS4-HMAC-SHA1') },
          { headers: { 'x-amz-content-sha256': createHash('sha256').update('other body').digest('hex') } },
        ];
        for (const c of cases) expectError(await call(main('/health'), health(), c), 401, 'AuthenticationFailedException');
      });

      it('accepts a signed x-amz-content-sha256 that matches the body', async () => {
        const body = JSON.stringify(health());
        const r = await call(main('/health'), body, { headers: { 'x-amz-content-sha256': createHash('sha256').update(body).digest('hex') } });
        expect(r.status).to.equal(200);
      });

      it('refuses a curl-signed request with the wrong secret', () => {
        const r = curlCall(target, main('/health'), health(), { accessKeyId: credA.accessKeyId, secretAccessKey: stranger.secretAccessKey }, { tmpDir: stack.dir });
        expectError(r, 401, 'AuthenticationFailedException');
      });
    });

    describe('audit, metrics and logs', () => {
      it('audits each call as kms.xks.<operation> with the request metadata', async () => {
        const md = requestMetadata('GenerateDataKey');
        const enc = await call(main('/keys/xks-main/encrypt'), { requestMetadata: md, plaintext: b64('audited'), encryptionAlgorithm: 'AES_GCM' });
        expect(enc.status).to.equal(200);
        const denied = requestMetadata('Encrypt');
        expectError(await call(main('/keys/xks-hmac/encrypt'), { requestMetadata: denied, plaintext: b64('x'), encryptionAlgorithm: 'AES_GCM' }), 400, 'InvalidKeyUsageException');
        const r = await d.get('/audit?action=kms.xks.encrypt');
        expect(r.status).to.equal(200);
        const ok = r.body.events.find((e: any) => e.xks?.kmsRequestId === md.kmsRequestId);
        expect(ok, 'event with our kmsRequestId').to.not.equal(undefined);
        expect(ok.action).to.equal('kms.xks.encrypt');
        expect(ok.outcome).to.equal('success');
        expect(ok.keyIdentity).to.equal(keys.main!.identity);
        expect(ok.keyVersion).to.equal('1');
        expect(ok.principal).to.equal(`xks:${credA.accessKeyId}`);
        expect(ok.xks).to.deep.equal({
          kmsRequestId: md.kmsRequestId,
          awsPrincipalArn: md.awsPrincipalArn,
          kmsOperation: 'GenerateDataKey',
          kmsKeyArn: md.kmsKeyArn,
        });
        const failed = r.body.events.find((e: any) => e.xks?.kmsRequestId === denied.kmsRequestId);
        expect(failed.outcome).to.equal('failure');
        expect(failed.detail.errorName).to.equal('InvalidKeyUsageException');
        const other = await d.get('/audit?action=kms.xks.metadata');
        expect(other.body.events.length).to.be.greaterThan(0);
        const health = await d.get('/audit?action=kms.xks.health');
        expect(health.body.events.some((e: any) => e.xks?.kmsRequestId === 'h-1')).to.equal(true);
        expect(health.body.events.some((e: any) => e.outcome === 'denied' && e.detail.errorName === 'AuthenticationFailedException')).to.equal(true);
        expect((await d.call('GET', '/v1/kms/audit/verify')).body.valid).to.equal(true);
      });

      it('keeps an audit record under 2 KB whatever the request metadata carries (issue 21)', async () => {
        const huge = 'a'.repeat(6000);
        const kmsRequestId = `big-${randomBytes(4).toString('hex')}${'r'.repeat(500)}`;
        const md = { kmsRequestId, kmsOperation: huge, awsPrincipalArn: huge, kmsKeyArn: huge };
        expectError(await call(main('/keys/no-such-key/metadata'), { requestMetadata: md }), 404, 'KeyNotFoundException');
        const r = await d.get('/audit?action=kms.xks.metadata&limit=10000');
        const ev = r.body.events.find((e: any) => e.xks?.kmsRequestId?.startsWith(kmsRequestId.slice(0, 12)));
        expect(ev, 'the rejected call is audited').to.not.equal(undefined);
        const [row] = await sql<{ bytes: number }>(
          stack,
          "SELECT length(CAST(time || action || outcome || COALESCE(region,'') || COALESCE(key_identity,'') || COALESCE(key_version,'') || COALESCE(principal,'') || COALESCE(organisation,'') || COALESCE(request_id,'') || COALESCE(detail,'') AS BLOB)) AS bytes FROM audit_events WHERE request_id = ?",
          [ev.requestId],
        );
        expect(row!.bytes).to.be.at.most(2048);
        expect(ev.xks.kmsRequestId).to.equal(kmsRequestId.slice(0, 128));
      });

      it('counts requests per operation and outcome', async () => {
        const m = await d.call('GET', '/metrics', undefined, { token: null, org: null });
        expect(m.body).to.match(/kmsd_xks_requests_total\{[^}]*operation="encrypt"[^}]*outcome="success"[^}]*\} [1-9]/);
        expect(m.body).to.match(/kmsd_xks_requests_total\{[^}]*operation="decrypt"[^}]*outcome="InvalidCiphertextException"/);
        expect(m.body).to.match(/kmsd_xks_request_duration_seconds_count\{[^}]*operation="health"/);
      });

      it('never writes plaintext to the logs (debug level)', () => {
        expect(d.logs).to.include('xks proxy listening');
        expect(d.logs).to.not.include(marker);
        expect(d.logs).to.not.include(b64(marker));
      });
    });
  });

  describe('after a restart without the old credential, over plain HTTP', () => {
    let d: Daemon;
    let target: XksTarget;
    before(async () => {
      d = await stack.start({ xks: xksConfig({ mainCredentials: 'onlyB' }) });
      target = { port: d.xksPort! };
    });
    after(() => d.stop());

    it('logs a warning about plain HTTP', () => {
      expect(d.logs).to.match(/plain HTTP/);
    });

    it('refuses the removed pair and accepts the remaining one', async () => {
      const body = { requestMetadata: { kmsRequestId: 'rot-1', kmsOperation: 'KmsHealthCheck' } };
      expectError(await xksCall(target, '/tenant-a/xks/kms/xks/v1/health', body, { credential: credA }), 401, 'AuthenticationFailedException');
      expectError(curlCall(target, '/tenant-a/xks/kms/xks/v1/health', body, credA, { tmpDir: stack.dir }), 401, 'AuthenticationFailedException');
      expect((await xksCall(target, '/tenant-a/xks/kms/xks/v1/health', body, { credential: credB })).status).to.equal(200);
      expect(curlCall(target, '/tenant-a/xks/kms/xks/v1/health', body, credB, { tmpDir: stack.dir }).status).to.equal(200);
    });

    it('still decrypts what the previous process encrypted', async () => {
      const enc = await xksCall(
        target,
        '/tenant-a/xks/kms/xks/v1/keys/xks-main/encrypt',
        { requestMetadata: requestMetadata('Encrypt'), plaintext: b64('across restarts'), encryptionAlgorithm: 'AES_GCM' },
        { credential: credB },
      );
      expect(enc.status).to.equal(200);
      const dec = curlCall(
        target,
        '/tenant-a/xks/kms/xks/v1/keys/xks-main/decrypt',
        { requestMetadata: requestMetadata('Decrypt'), encryptionAlgorithm: 'AES_GCM', ...enc.body },
        credB,
        { tmpDir: stack.dir },
      );
      expect(Buffer.from(dec.body.plaintext, 'base64').toString()).to.equal('across restarts');
    });
  });

  describe('with mutual TLS (clientCaFile + clientCommonName)', () => {
    let d: Daemon;
    const body = { requestMetadata: { kmsRequestId: 'mtls-1', kmsOperation: 'KmsHealthCheck' } };
    const p = '/tenant-a/xks/kms/xks/v1/health';
    before(async () => {
      d = await stack.start({
        xks: xksConfig({
          tls: { certFile: pki.serverCert, keyFile: pki.serverKey, clientCaFile: pki.caCert, clientCommonName: 'cks.kms.us-east-1.amazonaws.com' },
          mainCredentials: 'both',
        }),
      });
    });
    after(() => d.stop());

    it('accepts the configured CN from the configured CA (SDK signer and curl)', async () => {
      const target = { port: d.xksPort!, tls: { ca: pki.caCert, ...pki.client } };
      expect((await xksCall(target, p, body, { credential: credA })).status).to.equal(200);
      expect(curlCall(target, p, body, credA, { tmpDir: stack.dir }).status).to.equal(200);
    });

    it('still checks SigV4 on an accepted TLS connection', async () => {
      const target = { port: d.xksPort!, tls: { ca: pki.caCert, ...pki.client } };
      expectError(await xksCall(target, p, body, { credential: stranger }), 401, 'AuthenticationFailedException');
    });

    for (const [name, client] of [
      ['no client certificate', undefined],
      ['another CN from the same CA', 'wrongCn'],
      ['the right CN from another CA', 'otherCa'],
    ] as const) {
      it(`refuses the connection with ${name}`, async () => {
        const tls = { ca: pki.caCert, ...(client ? pki[client] : {}) };
        let err: Error | undefined;
        try {
          await xksCall({ port: d.xksPort!, tls }, p, body, { credential: credA });
        } catch (e) {
          err = e as Error;
        }
        expect(err, 'no HTTP response').to.be.instanceOf(Error);
        expect(() => curlCall({ port: d.xksPort!, tls }, p, body, credA, { tmpDir: stack.dir })).to.throw(/curl failed/);
      });
    }

    it('logs the refused CN', () => {
      expect(d.logs).to.include('client certificate refused');
    });
  });
});
