import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { constants, createHash, createPublicKey, publicEncrypt, randomBytes, verify as nodeVerify } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { keyObjects, ownMongoUri } from './keys-token.js';
import { TestStack, type Daemon, type Reply } from '../helpers/stack.js';

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');
const unb64 = (s: string) => Buffer.from(s, 'base64');

function expectError(r: Reply, status: number, code: string, mentions?: string | RegExp, what = ''): void {
  expect(r.status, `${what} ${JSON.stringify(r.body)}`).to.equal(status);
  expect(r.headers.get('content-type')).to.match(/^application\/json/);
  expect(r.body.code, `${what} ${JSON.stringify(r.body)}`).to.equal(code);
  expect(r.body.message).to.be.a('string').and.not.equal('');
  if (typeof mentions === 'string') expect(r.body.message, what).to.include(mentions);
  else if (mentions) expect(r.body.message, what).to.match(mentions);
}

/** `kms:v<N>:<base64>` → its parts (and proves the format). */
function versioned(s: string): { version: number; data: Buffer } {
  expect(s).to.be.a('string').and.match(/^kms:v[1-9][0-9]*:[A-Za-z0-9+/]*={0,2}$/);
  const [, v, d] = /^kms:v(\d+):(.*)$/.exec(s)!;
  return { version: Number(v), data: unb64(d!) };
}

const NODE_HASH: Record<string, string> = { 'sha2-256': 'sha256', 'sha2-384': 'sha384', 'sha2-512': 'sha512', SHA256: 'sha256', SHA384: 'sha384', SHA512: 'sha512' };
const DEFAULT_HASH: Record<string, string> = { 'ecdsa-p256': 'sha2-256', 'ecdsa-p384': 'sha2-384', 'ecdsa-p521': 'sha2-512', 'rsa-2048': 'sha2-256', 'rsa-3072': 'sha2-256', 'rsa-4096': 'sha2-256' };

describe('crypto: cryptographic operations in the token, checked by node:crypto and OpenSSL', function () {
  this.timeout(120_000);
  let stack: TestStack;
  let d: Daemon;
  let work: string;
  let fileNo = 0;
  const k: Record<string, any> = {};

  /** Writes data to a temp file for the OpenSSL CLI. */
  const file = (data: string | Buffer) => {
    const f = path.join(work, `f${++fileNo}`);
    writeFileSync(f, data);
    return f;
  };
  const openssl = (...args: string[]) => spawnSync('openssl', args, { encoding: 'utf8' });

  /** OpenSSL CLI verification of a signature against a public-key PEM from kmsd. */
  function opensslVerify(keyType: string, pem: string, msg: Buffer, sig: Buffer, hash?: string, pss?: boolean): boolean {
    const pub = file(pem);
    const m = file(msg);
    const s = file(sig);
    if (keyType === 'ed25519') {
      const r = openssl('pkeyutl', '-verify', '-pubin', '-inkey', pub, '-rawin', '-in', m, '-sigfile', s);
      return r.status === 0 && /Signature Verified Successfully/.test(r.stdout);
    }
    const args = ['dgst', `-${NODE_HASH[hash!]}`, '-verify', pub, '-signature', s];
    if (pss) args.push('-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:digest', '-sigopt', `rsa_mgf1_md:${NODE_HASH[hash!]}`);
    const r = openssl(...args, m);
    return r.status === 0 && /Verified OK/.test(r.stdout);
  }

  /** node:crypto verification of the same. */
  function nodeVerifies(keyType: string, pem: string, msg: Buffer, sig: Buffer, hash?: string, pss?: boolean): boolean {
    const key = createPublicKey(pem);
    if (keyType === 'ed25519') return nodeVerify(null, msg, key, sig);
    if (keyType.startsWith('ecdsa')) return nodeVerify(NODE_HASH[hash!]!, msg, { key, dsaEncoding: 'der' }, sig);
    return nodeVerify(
      NODE_HASH[hash!]!,
      msg,
      pss ? { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST } : { key, padding: constants.RSA_PKCS1_PADDING },
      sig,
    );
  }

  before(async () => {
    stack = await TestStack.create({
      name: 'crypto',
      mongodbUri: ownMongoUri('crypto'),
      config: { rotation: { evaluationIntervalSeconds: 3600, maxManualRotations: 50 }, limits: { maxBodyBytes: 65536, maxBatchItems: 50 } },
    });
    work = path.join(stack.dir, 'openssl');
    mkdirSync(work, { recursive: true });
    d = await stack.start();
    const types = [
      'aes256-gcm96', 'aes128-gcm96', 'hmac', 'hmac-sha256', 'hmac-sha384', 'hmac-sha512',
      'ed25519', 'ecdsa-p256', 'ecdsa-p384', 'ecdsa-p521', 'rsa-2048', 'rsa-3072', 'rsa-4096',
    ];
    await Promise.all(types.map(async (t) => (k[t] = await d.createKey(`c ${t}`, t))));
    k.aesOther = await d.createKey('c aes other', 'aes256-gcm96');
  });
  after(() => stack.cleanup());

  describe('AES-GCM encrypt/decrypt', () => {
    for (const type of ['aes256-gcm96', 'aes128-gcm96'])
      it(`${type}: round trips on every version after two rotations, keyVersion as string or integer`, async () => {
        const id = k[type].identity;
        await d.post(`/keys/${id}/rotate`);
        const rot = await d.post(`/keys/${id}/rotate`);
        expect(rot.body.latestVersion).to.equal(3);
        // the token holds one secret object per version
        expect(keyObjects(stack, id)).to.have.length(3);
        const pt = randomBytes(100);
        for (const keyVersion of [undefined, '1', '2', 3]) {
          const e = await d.post(`/keys/${id}/encrypt`, { plaintext: b64(pt), ...(keyVersion !== undefined ? { keyVersion } : {}) });
          expect(e.status).to.equal(200);
          const want = String(keyVersion ?? 3);
          expect(e.body.keyVersion).to.equal(want);
          const c = versioned(e.body.ciphertext);
          expect(c.version).to.equal(Number(want));
          expect(c.data.length, 'IV ‖ ciphertext ‖ tag').to.equal(12 + pt.length + 16);
          const p = await d.post(`/keys/${id}/decrypt`, { ciphertext: e.body.ciphertext });
          expect(p.status).to.equal(200);
          expect(p.body).to.deep.equal({ plaintext: b64(pt), keyVersion: want });
        }
      });

    it('a fresh 96-bit IV for every call, and ciphertexts of equal plaintexts differ', async () => {
      const id = k['aes256-gcm96'].identity;
      const ivs = new Set<string>();
      const cts = new Set<string>();
      for (let i = 0; i < 25; i++) {
        const e = await d.post(`/keys/${id}/encrypt`, { plaintext: b64('same') });
        ivs.add(versioned(e.body.ciphertext).data.subarray(0, 12).toString('hex'));
        cts.add(e.body.ciphertext);
      }
      expect(ivs.size).to.equal(25);
      expect(cts.size).to.equal(25);
    });

    it('empty and binary plaintexts round trip', async () => {
      const id = k['aes128-gcm96'].identity;
      for (const pt of [Buffer.alloc(0), Buffer.from([0, 255, 0, 1]), randomBytes(4096)]) {
        const e = await d.post(`/keys/${id}/encrypt`, { plaintext: b64(pt) });
        expect(e.status, `len ${pt.length}: ${JSON.stringify(e.body)}`).to.equal(200);
        const p = await d.post(`/keys/${id}/decrypt`, { ciphertext: e.body.ciphertext });
        expect(p.status).to.equal(200);
        expect(unb64(p.body.plaintext).equals(pt)).to.equal(true);
      }
    });

    it('AAD binds: right aad decrypts, wrong or missing aad → 422 DecryptionFailed', async () => {
      const id = k['aes256-gcm96'].identity;
      const e = await d.post(`/keys/${id}/encrypt`, { plaintext: b64('with aad'), aad: b64('context-1') });
      expect((await d.post(`/keys/${id}/decrypt`, { ciphertext: e.body.ciphertext, aad: b64('context-1') })).body.plaintext).to.equal(b64('with aad'));
      expectError(await d.post(`/keys/${id}/decrypt`, { ciphertext: e.body.ciphertext, aad: b64('context-2') }), 422, 'DecryptionFailed');
      expectError(await d.post(`/keys/${id}/decrypt`, { ciphertext: e.body.ciphertext }), 422, 'DecryptionFailed');
      const noAad = await d.post(`/keys/${id}/encrypt`, { plaintext: b64('no aad') });
      expectError(await d.post(`/keys/${id}/decrypt`, { ciphertext: noAad.body.ciphertext, aad: b64('x') }), 422, 'DecryptionFailed');
    });

    it('tampering with IV, ciphertext or tag → 422 DecryptionFailed', async () => {
      const id = k['aes256-gcm96'].identity;
      const e = await d.post(`/keys/${id}/encrypt`, { plaintext: b64('do not touch') });
      const { version, data } = versioned(e.body.ciphertext);
      for (const at of [0, 11, 12, 12 + 5, data.length - 16, data.length - 1]) {
        const t = Buffer.from(data);
        t[at]! ^= 0x01;
        expectError(await d.post(`/keys/${id}/decrypt`, { ciphertext: `kms:v${version}:${b64(t)}` }), 422, 'DecryptionFailed', undefined, `byte ${at}`);
      }
      // one byte cut off the tag, one byte appended
      expectError(await d.post(`/keys/${id}/decrypt`, { ciphertext: `kms:v${version}:${b64(data.subarray(0, -1))}` }), 422, 'DecryptionFailed');
      expectError(await d.post(`/keys/${id}/decrypt`, { ciphertext: `kms:v${version}:${b64(Buffer.concat([data, Buffer.from([0])]))}` }), 422, 'DecryptionFailed');
    });

    it('a ciphertext of another key → 422 DecryptionFailed', async () => {
      const e = await d.post(`/keys/${k.aesOther.identity}/encrypt`, { plaintext: b64('other') });
      expectError(await d.post(`/keys/${k['aes256-gcm96'].identity}/decrypt`, { ciphertext: e.body.ciphertext }), 422, 'DecryptionFailed');
      expectError(await d.post(`/keys/default/decrypt`, { ciphertext: e.body.ciphertext }), 422, 'DecryptionFailed');
    });

    it('unparseable ciphertexts or ones naming a missing version → 400 InvalidCiphertext', async () => {
      const id = k.aesOther.identity;
      const good = versioned((await d.post(`/keys/${id}/encrypt`, { plaintext: b64('x') })).body.ciphertext).data;
      const bad = [
        `kms:v9:${b64(good)}`,
        `kms:v0:${b64(good)}`,
        `kms:v-1:${b64(good)}`,
        `kms:v01:${b64(good)}`,
        `vault:v1:${b64(good)}`,
        `kms:1:${b64(good)}`,
        `kms:v1:${b64(good)}!`,
        `kms:v1:${b64(good).slice(0, -1)}`,
        'kms:v1:not*base64',
        'kms:v1:',
        `kms:v1:${b64(good.subarray(0, 20))}`,
        b64(good),
        '',
        `kms:v99999999999:${b64(good)}`,
        ` kms:v1:${b64(good)}`,
        `kms:v1:${b64(good)}\n`,
      ];
      for (const ct of bad) expectError(await d.post(`/keys/${id}/decrypt`, { ciphertext: ct }), 400, 'InvalidCiphertext', undefined, JSON.stringify(ct));
      const r = await d.post(`/keys/${id}/decrypt`, { ciphertext: `kms:v9:${b64(good)}` });
      expect(r.body.message).to.match(/version 9/);
    });

    it('below minDecryptionVersion → 422 VersionNotAllowed; back to 1 → decrypts again', async () => {
      const k2 = await d.createKey('c min version', 'aes256-gcm96');
      const v1 = (await d.post(`/keys/${k2.identity}/encrypt`, { plaintext: b64('old') })).body.ciphertext;
      await d.post(`/keys/${k2.identity}/rotate`);
      const v2 = (await d.post(`/keys/${k2.identity}/encrypt`, { plaintext: b64('new') })).body.ciphertext;
      expect((await d.patch(`/keys/${k2.identity}`, { minDecryptionVersion: 2 })).status).to.equal(200);
      expectError(await d.post(`/keys/${k2.identity}/decrypt`, { ciphertext: v1 }), 422, 'VersionNotAllowed');
      expect((await d.post(`/keys/${k2.identity}/decrypt`, { ciphertext: v2 })).body.plaintext).to.equal(b64('new'));
      // re-encrypt of a too-old ciphertext is refused the same way
      expectError(await d.post(`/keys/${k2.identity}/re-encrypt`, { ciphertext: v1 }), 422, 'VersionNotAllowed');
      await d.patch(`/keys/${k2.identity}`, { minDecryptionVersion: 1 });
      expect((await d.post(`/keys/${k2.identity}/decrypt`, { ciphertext: v1 })).body.plaintext).to.equal(b64('old'));
    });

    it('encrypt with a keyVersion the key does not have or that is malformed → 400 ValidationError naming keyVersion', async () => {
      const id = k.aesOther.identity;
      for (const keyVersion of ['2', 0, '0', -1, '1.0', 'v1', 1.5, '', true, null])
        expectError(await d.post(`/keys/${id}/encrypt`, { plaintext: b64('x'), keyVersion }), 400, 'ValidationError', 'keyVersion', JSON.stringify(keyVersion));
    });

    it('plaintext is required; plaintext and batch together → 400', async () => {
      const id = k.aesOther.identity;
      expectError(await d.post(`/keys/${id}/encrypt`, {}), 400, 'ValidationError', 'plaintext');
      expectError(await d.post(`/keys/${id}/encrypt`, { plaintext: b64('x'), batch: [{ plaintext: b64('y') }] }), 400, 'ValidationError', 'batch');
      expectError(await d.post(`/keys/${id}/decrypt`, {}), 400, 'ValidationError', 'ciphertext');
    });
  });

  describe('batch encrypt/decrypt', () => {
    it('encrypts every item and decrypts a mix of good and bad items, each bad one with its own error', async () => {
      const id = k['aes256-gcm96'].identity;
      const e = await d.post(`/keys/${id}/encrypt`, {
        batch: [{ plaintext: b64('one') }, { plaintext: b64('two'), aad: b64('ctx') }, { plaintext: '' }],
      });
      expect(e.status).to.equal(200);
      expect(e.body.batch).to.have.length(3);
      for (const item of e.body.batch) {
        expect(item.keyVersion).to.be.a('string');
        versioned(item.ciphertext);
      }
      const [c1, c2, c3] = e.body.batch.map((i: any) => i.ciphertext);
      const tampered = (() => {
        const { version, data } = versioned(c1);
        data[20]! ^= 1;
        return `kms:v${version}:${b64(data)}`;
      })();
      const foreign = (await d.post(`/keys/${k.aesOther.identity}/encrypt`, { plaintext: b64('x') })).body.ciphertext;
      const r = await d.post(`/keys/${id}/decrypt`, {
        batch: [
          { ciphertext: c1 },
          { ciphertext: tampered },
          { ciphertext: c2, aad: b64('ctx') },
          { ciphertext: c2, aad: b64('wrong') },
          { ciphertext: 'garbage' },
          { ciphertext: c1.replace(/^kms:v\d+/, 'kms:v77') },
          { ciphertext: foreign },
          { ciphertext: c3 },
        ],
      });
      expect(r.status).to.equal(200);
      const out = r.body.batch;
      expect(out).to.have.length(8);
      expect(out[0]).to.deep.equal({ plaintext: b64('one'), keyVersion: e.body.batch[0].keyVersion });
      expect(out[1].error.code).to.equal('DecryptionFailed');
      expect(out[2].plaintext).to.equal(b64('two'));
      expect(out[3].error.code).to.equal('DecryptionFailed');
      expect(out[4].error.code).to.equal('InvalidCiphertext');
      expect(out[5].error.code).to.equal('InvalidCiphertext');
      expect(out[6].error.code).to.equal('DecryptionFailed');
      expect(out[7].plaintext).to.equal('');
      for (const i of [1, 3, 4, 5, 6]) {
        expect(out[i]).to.have.all.keys('error');
        expect(out[i].error.message).to.be.a('string').and.not.equal('');
      }
    });

    it('a batch item below minDecryptionVersion gets VersionNotAllowed in its slot', async () => {
      const k2 = await d.createKey('c batch min', 'aes256-gcm96');
      const v1 = (await d.post(`/keys/${k2.identity}/encrypt`, { plaintext: b64('a') })).body.ciphertext;
      await d.post(`/keys/${k2.identity}/rotate`);
      const v2 = (await d.post(`/keys/${k2.identity}/encrypt`, { plaintext: b64('b') })).body.ciphertext;
      await d.patch(`/keys/${k2.identity}`, { minDecryptionVersion: 2 });
      const r = await d.post(`/keys/${k2.identity}/decrypt`, { batch: [{ ciphertext: v1 }, { ciphertext: v2 }] });
      expect(r.body.batch[0].error.code).to.equal('VersionNotAllowed');
      expect(r.body.batch[1]).to.deep.equal({ plaintext: b64('b'), keyVersion: '2' });
    });

    it('batch limits and shapes: over limits.maxBatchItems → 400; empty batch → empty result; malformed item → {error} naming it', async () => {
      const id = k['aes256-gcm96'].identity;
      const tooMany = Array.from({ length: 51 }, () => ({ plaintext: b64('x') }));
      expectError(await d.post(`/keys/${id}/encrypt`, { batch: tooMany }), 400, 'ValidationError', 'batch');
      expect((await d.post(`/keys/${id}/encrypt`, { batch: tooMany.slice(0, 50) })).body.batch).to.have.length(50);
      const empty = await d.post(`/keys/${id}/encrypt`, { batch: [] });
      expect(empty.status).to.equal(200);
      expect(empty.body.batch).to.deep.equal([]);
      // A malformed item is an {error} in its slot naming the field; the others are served.
      const bad = await d.post(`/keys/${id}/encrypt`, { batch: [{ plaintext: b64('x') }, { plaintext: '%%%' }, { plaintext: b64('x'), extra: 1 }] });
      expect(bad.status).to.equal(200);
      expect(bad.body.batch[0].ciphertext).to.be.a('string');
      expect(bad.body.batch[1].error).to.deep.include({ code: 'ValidationError' });
      expect(bad.body.batch[1].error.message).to.include('batch[1].plaintext');
      expect(bad.body.batch[2].error.message).to.include('batch[2].extra');
      const badDec = await d.post(`/keys/${id}/decrypt`, { batch: [{ ciphertext: 5 }, { ciphertext: bad.body.batch[0].ciphertext }] });
      expect(badDec.body.batch[0].error.message).to.include('batch[0].ciphertext');
      expect(badDec.body.batch[1].plaintext).to.equal(b64('x'));
      expectError(await d.post(`/keys/${id}/encrypt`, { batch: { plaintext: b64('x') } }), 400, 'ValidationError', 'batch');
    });
  });

  describe('re-encrypt', () => {
    it('to the latest version of the same key (sourceKeyVersion and keyVersion as strings)', async () => {
      const kk = await d.createKey('c reenc', 'aes256-gcm96');
      const old = (await d.post(`/keys/${kk.identity}/encrypt`, { plaintext: b64('rewrap me'), aad: b64('ctx') })).body.ciphertext;
      await d.post(`/keys/${kk.identity}/rotate`);
      const r = await d.post(`/keys/${kk.identity}/re-encrypt`, { ciphertext: old, aad: b64('ctx') });
      expect(r.status).to.equal(200);
      expect(r.body).to.include({ sourceKeyVersion: '1', keyVersion: '2' });
      expect(versioned(r.body.ciphertext).version).to.equal(2);
      expect((await d.post(`/keys/${kk.identity}/decrypt`, { ciphertext: r.body.ciphertext, aad: b64('ctx') })).body.plaintext).to.equal(b64('rewrap me'));
      expectError(await d.post(`/keys/${kk.identity}/re-encrypt`, { ciphertext: old, aad: b64('other') }), 422, 'DecryptionFailed');
      expectError(await d.post(`/keys/${kk.identity}/re-encrypt`, { ciphertext: 'kms:v5:AAAA' }), 400, 'InvalidCiphertext');
    });

    it('to a destinationKey (by slug or identity) the caller may use', async () => {
      const src = k['aes128-gcm96'].identity;
      const ct = (await d.post(`/keys/${src}/encrypt`, { plaintext: b64('move me') })).body.ciphertext;
      for (const dest of ['c-aes-other', k.aesOther.identity]) {
        const r = await d.post(`/keys/${src}/re-encrypt`, { ciphertext: ct, destinationKey: dest });
        expect(r.status).to.equal(200);
        expect(r.body.sourceKeyVersion).to.equal(String(versioned(ct).version));
        const back = await d.post(`/keys/${k.aesOther.identity}/decrypt`, { ciphertext: r.body.ciphertext });
        expect(back.body.plaintext).to.equal(b64('move me'));
        expectError(await d.post(`/keys/${src}/decrypt`, { ciphertext: r.body.ciphertext }), 422, 'DecryptionFailed');
      }
    });

    it('destinationKey that is unknown → 404, not AES → 400 UnsupportedOperation, disabled → 409', async () => {
      const src = k['aes128-gcm96'].identity;
      const ct = (await d.post(`/keys/${src}/encrypt`, { plaintext: b64('x') })).body.ciphertext;
      expectError(await d.post(`/keys/${src}/re-encrypt`, { ciphertext: ct, destinationKey: 'nope' }), 404, 'NotFound');
      expectError(await d.post(`/keys/${src}/re-encrypt`, { ciphertext: ct, destinationKey: k.hmac.identity }), 400, 'UnsupportedOperation');
      const dis = await d.createKey('c reenc disabled', 'aes256-gcm96');
      await d.post(`/keys/${dis.identity}/disable`);
      expectError(await d.post(`/keys/${src}/re-encrypt`, { ciphertext: ct, destinationKey: dis.identity }), 409, 'KeyStateConflict');
    });
  });

  describe('generate-data-key', () => {
    for (const [spec, bytes] of [['AES_256', 32], ['AES_128', 16], [undefined, 32]] as const)
      it(`${spec ?? 'default keySpec'}: a ${bytes}-byte key whose ciphertext decrypts back to the plaintext`, async () => {
        const id = k['aes256-gcm96'].identity;
        const r = await d.post(`/keys/${id}/generate-data-key`, spec ? { keySpec: spec } : {});
        expect(r.status).to.equal(200);
        expect(r.body.keyVersion).to.be.a('string');
        const dk = unb64(r.body.plaintext);
        expect(dk.length).to.equal(bytes);
        const back = await d.post(`/keys/${id}/decrypt`, { ciphertext: r.body.ciphertext });
        expect(back.body.plaintext).to.equal(r.body.plaintext);
      });

    it('without plaintext (includePlaintext: false) and with aad; two data keys differ', async () => {
      const id = k['aes256-gcm96'].identity;
      const r = await d.post(`/keys/${id}/generate-data-key`, { keySpec: 'AES_128', includePlaintext: false, aad: b64('bucket-1') });
      expect(r.status).to.equal(200);
      expect(r.body).not.to.have.property('plaintext');
      const back = await d.post(`/keys/${id}/decrypt`, { ciphertext: r.body.ciphertext, aad: b64('bucket-1') });
      expect(unb64(back.body.plaintext).length).to.equal(16);
      expectError(await d.post(`/keys/${id}/decrypt`, { ciphertext: r.body.ciphertext }), 422, 'DecryptionFailed');
      const a = await d.post(`/keys/${id}/generate-data-key`, {});
      const b = await d.post(`/keys/${id}/generate-data-key`, {});
      expect(a.body.plaintext).not.to.equal(b.body.plaintext);
    });

    it('bad keySpec or includePlaintext type → 400 ValidationError naming it', async () => {
      const id = k['aes256-gcm96'].identity;
      expectError(await d.post(`/keys/${id}/generate-data-key`, { keySpec: 'AES_512' }), 400, 'ValidationError', 'keySpec');
      expectError(await d.post(`/keys/${id}/generate-data-key`, { keySpec: 'aes_256' }), 400, 'ValidationError', 'keySpec');
      expectError(await d.post(`/keys/${id}/generate-data-key`, { includePlaintext: 'no' }), 400, 'ValidationError', 'includePlaintext');
    });
  });

  describe('sign/verify, each signature checked by node:crypto and the OpenSSL CLI against public-key', () => {
    const msg = Buffer.from('the quick brown fox jumps over the lazy dog');

    async function signAndCheck(type: string, body: Record<string, unknown>, hash: string | undefined, pss: boolean, message = msg) {
      const id = k[type].identity;
      const r = await d.post(`/keys/${id}/sign`, body);
      expect(r.status, JSON.stringify(r.body)).to.equal(200);
      const { version, data: sig } = versioned(r.body.signature);
      expect(r.body.keyVersion).to.equal(String(version));
      const pk = await d.get(`/keys/${id}/public-key?version=${version}`);
      const pem = pk.body.keys[String(version)];
      expect(nodeVerifies(type, pem, message, sig, hash, pss), `node:crypto ${type} ${hash} pss=${pss}`).to.equal(true);
      // (OpenSSL 3.0's pkeyutl cannot read an empty message for Ed25519: "Could not allocate 0 bytes")
      if (message.length || type !== 'ed25519')
        expect(opensslVerify(type, pem, message, sig, hash, pss), `openssl ${type} ${hash} pss=${pss}`).to.equal(true);
      // and neither accepts it for another message
      const other = Buffer.concat([message, Buffer.from('!')]);
      expect(nodeVerifies(type, pem, other, sig, hash, pss)).to.equal(false);
      expect(opensslVerify(type, pem, other, sig, hash, pss)).to.equal(false);
      // kmsd's own verify agrees
      const v = await d.post(`/keys/${id}/verify`, { ...body, signature: r.body.signature, keyVersion: undefined });
      expect(v.status, JSON.stringify(v.body)).to.equal(200);
      expect(v.body).to.deep.equal({ valid: true });
      return { sig, pem, signature: r.body.signature as string };
    }

    it('ed25519: the raw 64-byte signature of the message itself', async () => {
      const { sig } = await signAndCheck('ed25519', { input: b64(msg) }, undefined, false);
      expect(sig.length).to.equal(64);
    });

    for (const type of ['ecdsa-p256', 'ecdsa-p384', 'ecdsa-p521'])
      it(`${type}: DER signature with the default hash (${DEFAULT_HASH[type]}) and with every explicit hash`, async () => {
        const { sig } = await signAndCheck(type, { input: b64(msg) }, DEFAULT_HASH[type], false);
        expect(sig[0]).to.equal(0x30);
        for (const h of ['sha2-256', 'sha2-384', 'sha2-512', 'SHA256', 'SHA384', 'SHA512'])
          await signAndCheck(type, { input: b64(msg), hashAlgorithm: h }, h, false);
      });

    for (const type of ['ecdsa-p256', 'ecdsa-p384', 'ecdsa-p521'])
      it(`${type}: prehashed input (the digest) verifies over the original message`, async () => {
        const h = DEFAULT_HASH[type]!;
        const digest = createHash(NODE_HASH[h]!).update(msg).digest();
        await signAndCheck(type, { input: b64(digest), prehashed: true, hashAlgorithm: h }, h, false);
        // prehashed with the default hash (no hashAlgorithm)
        await signAndCheck(type, { input: b64(digest), prehashed: true }, h, false);
      });

    for (const h of ['sha2-256', 'sha2-384', 'sha2-512'])
      it(`rsa-2048: PSS (default) and PKCS#1 v1.5 with ${h}, plain and prehashed`, async () => {
        await signAndCheck('rsa-2048', { input: b64(msg), hashAlgorithm: h }, h, true);
        await signAndCheck('rsa-2048', { input: b64(msg), hashAlgorithm: h, signatureAlgorithm: 'pss' }, h, true);
        await signAndCheck('rsa-2048', { input: b64(msg), hashAlgorithm: h, signatureAlgorithm: 'pkcs1v15' }, h, false);
        const digest = createHash(NODE_HASH[h]!).update(msg).digest();
        await signAndCheck('rsa-2048', { input: b64(digest), prehashed: true, hashAlgorithm: h }, h, true);
        await signAndCheck('rsa-2048', { input: b64(digest), prehashed: true, hashAlgorithm: h, signatureAlgorithm: 'pkcs1v15' }, h, false);
      });

    for (const type of ['rsa-3072', 'rsa-4096'])
      it(`${type}: PSS by default with sha2-256, PKCS#1 v1.5 with sha2-512`, async () => {
        const { sig } = await signAndCheck(type, { input: b64(msg) }, 'sha2-256', true);
        expect(sig.length).to.equal(Number(type.slice(4)) / 8);
        await signAndCheck(type, { input: b64(msg), hashAlgorithm: 'sha2-512', signatureAlgorithm: 'pkcs1v15' }, 'sha2-512', false);
      });

    it('empty inputs are computed in the token (Ed25519, ECDSA, HMAC, AES, RSA) and leave the sessions usable', async () => {
      // regression: pkcs11js passes an empty Buffer as NULL; SoftHSM2 then failed with
      // CKR_ARGUMENTS_BAD and left the operation active, turning every later request into a 500
      const empty = Buffer.alloc(0);
      for (let round = 0; round < 2; round++) {
        await signAndCheck('ed25519', { input: '' }, undefined, false, empty);
        await signAndCheck('ecdsa-p256', { input: '' }, 'sha2-256', false, empty);
        await signAndCheck('rsa-2048', { input: '' }, 'sha2-256', true, empty);
        const mac = await d.post(`/keys/${k['hmac-sha512'].identity}/hmac`, { input: '' });
        expect(mac.status, JSON.stringify(mac.body)).to.equal(200);
        expect(versioned(mac.body.hmac).data.length).to.equal(64);
        expect((await d.post(`/keys/${k['hmac-sha512'].identity}/verify-hmac`, { input: '', hmac: mac.body.hmac })).body.valid).to.equal(true);
        expect((await d.post(`/keys/${k['hmac-sha512'].identity}/verify-hmac`, { input: b64('x'), hmac: mac.body.hmac })).body.valid).to.equal(false);
        const e = await d.post(`/keys/${k['aes256-gcm96'].identity}/encrypt`, { plaintext: '' });
        expect(e.status, JSON.stringify(e.body)).to.equal(200);
        expect(versioned(e.body.ciphertext).data.length).to.equal(28);
        expect((await d.post(`/keys/${k['aes256-gcm96'].identity}/decrypt`, { ciphertext: e.body.ciphertext })).body.plaintext).to.equal('');
        expectError(await d.post(`/keys/${k['rsa-2048'].identity}/decrypt-asymmetric`, { ciphertext: '', keyVersion: '1' }), 422, 'DecryptionFailed');
      }
      // and everything else still works on the same sessions
      for (let i = 0; i < 10; i++) {
        expect((await d.post(`/keys/${k['aes256-gcm96'].identity}/encrypt`, { plaintext: b64('after') })).status).to.equal(200);
        expect((await d.post(`/keys/${k.hmac.identity}/hmac`, { input: b64('after') })).status).to.equal(200);
        expect((await d.post(`/keys/${k.ed25519.identity}/sign`, { input: b64('after') })).status).to.equal(200);
      }
    });

    it('PSS signatures are randomised, PKCS#1 v1.5 and Ed25519 are deterministic', async () => {
      const id = k['rsa-2048'].identity;
      const p1 = (await d.post(`/keys/${id}/sign`, { input: b64(msg) })).body.signature;
      const p2 = (await d.post(`/keys/${id}/sign`, { input: b64(msg) })).body.signature;
      expect(p1).not.to.equal(p2);
      const v1 = (await d.post(`/keys/${id}/sign`, { input: b64(msg), signatureAlgorithm: 'pkcs1v15' })).body.signature;
      const v2 = (await d.post(`/keys/${id}/sign`, { input: b64(msg), signatureAlgorithm: 'pkcs1v15' })).body.signature;
      expect(v1).to.equal(v2);
      const e1 = (await d.post(`/keys/${k.ed25519.identity}/sign`, { input: b64(msg) })).body.signature;
      const e2 = (await d.post(`/keys/${k.ed25519.identity}/sign`, { input: b64(msg) })).body.signature;
      expect(e1).to.equal(e2);
    });

    it('every version signs after rotations; public-key lists every enabled version; old signatures still verify', async () => {
      const kk = await d.createKey('c sign rotate', 'ecdsa-p256');
      const s1 = (await d.post(`/keys/${kk.identity}/sign`, { input: b64(msg) })).body.signature;
      await d.post(`/keys/${kk.identity}/rotate`);
      await d.post(`/keys/${kk.identity}/rotate`);
      const all = await d.get(`/keys/${kk.identity}/public-key`);
      expect(all.status).to.equal(200);
      expect(all.body.keyType).to.equal('ecdsa-p256');
      expect(Object.keys(all.body.keys).sort()).to.deep.equal(['1', '2', '3']);
      expect(new Set(Object.values(all.body.keys)).size).to.equal(3);
      for (const v of ['1', '2', '3']) {
        const s = await d.post(`/keys/${kk.identity}/sign`, { input: b64(msg), keyVersion: v });
        expect(s.body.keyVersion).to.equal(v);
        const { version, data } = versioned(s.body.signature);
        expect(version).to.equal(Number(v));
        expect(nodeVerifies('ecdsa-p256', all.body.keys[v], msg, data, 'sha2-256', false)).to.equal(true);
        expect(opensslVerify('ecdsa-p256', all.body.keys[v], msg, data, 'sha2-256')).to.equal(true);
        expect(nodeVerifies('ecdsa-p256', all.body.keys[v === '1' ? '2' : '1'], msg, data, 'sha2-256', false)).to.equal(false);
      }
      expect((await d.post(`/keys/${kk.identity}/verify`, { input: b64(msg), signature: s1 })).body.valid).to.equal(true);
      const latest = await d.post(`/keys/${kk.identity}/sign`, { input: b64(msg) });
      expect(latest.body.keyVersion).to.equal('3');
      await d.patch(`/keys/${kk.identity}`, { minDecryptionVersion: 2 });
      expectError(await d.post(`/keys/${kk.identity}/verify`, { input: b64(msg), signature: s1 }), 422, 'VersionNotAllowed');
    });

    it('a wrong signature is {valid: false} (200), never an error', async () => {
      for (const type of ['ed25519', 'ecdsa-p384', 'rsa-2048']) {
        const id = k[type].identity;
        const good = (await d.post(`/keys/${id}/sign`, { input: b64(msg) })).body.signature as string;
        const { version, data } = versioned(good);
        const flipped = Buffer.from(data);
        flipped[flipped.length - 1]! ^= 1;
        const cases = [
          { input: b64('another message'), signature: good },
          { input: b64(msg), signature: `kms:v${version}:${b64(flipped)}` },
          { input: b64(msg), signature: `kms:v${version}:${b64(data.subarray(0, data.length - 3))}` },
          { input: b64(msg), signature: `kms:v${version}:${b64(randomBytes(data.length))}` },
          { input: b64(msg), signature: `kms:v${version}:` },
          { input: b64(msg), signature: `kms:v${version}:${b64(Buffer.alloc(data.length))}` },
        ];
        for (const c of cases) {
          const r = await d.post(`/keys/${id}/verify`, c);
          expect(r.status, `${type} ${JSON.stringify(r.body)}`).to.equal(200);
          expect(r.body).to.deep.equal({ valid: false });
        }
      }
      // a signature made by another key of the same type
      const other = await d.createKey('c other p256', 'ecdsa-p256');
      const sig = (await d.post(`/keys/${other.identity}/sign`, { input: b64(msg) })).body.signature;
      expect((await d.post(`/keys/${k['ecdsa-p256'].identity}/verify`, { input: b64(msg), signature: sig })).body).to.deep.equal({ valid: false });
      // verified with another hash or padding than it was made with
      const pss = (await d.post(`/keys/${k['rsa-2048'].identity}/sign`, { input: b64(msg) })).body.signature;
      expect((await d.post(`/keys/${k['rsa-2048'].identity}/verify`, { input: b64(msg), signature: pss, signatureAlgorithm: 'pkcs1v15' })).body.valid).to.equal(false);
      expect((await d.post(`/keys/${k['rsa-2048'].identity}/verify`, { input: b64(msg), signature: pss, hashAlgorithm: 'sha2-512' })).body.valid).to.equal(false);
    });

    it('signature strings that do not parse or name a missing version → 400 InvalidCiphertext', async () => {
      const id = k['ecdsa-p256'].identity;
      for (const signature of ['kms:v9:AAAA', 'garbage', '', 'kms:v1:***'])
        expectError(await d.post(`/keys/${id}/verify`, { input: b64(msg), signature }), 400, 'InvalidCiphertext', undefined, signature);
    });

    it('request rules: Ed25519 prehashed/hashAlgorithm, non-empty context, bad hash, digest length, signatureAlgorithm → 400', async () => {
      const ed = k.ed25519.identity;
      const ec = k['ecdsa-p256'].identity;
      const rsa = k['rsa-2048'].identity;
      expectError(await d.post(`/keys/${ed}/sign`, { input: b64(msg), prehashed: true }), 400, 'ValidationError', 'prehashed');
      expectError(await d.post(`/keys/${ed}/sign`, { input: b64(msg), hashAlgorithm: 'sha2-256' }), 400, 'ValidationError', 'hashAlgorithm');
      expectError(await d.post(`/keys/${ed}/sign`, { input: b64(msg), context: 'ctx' }), 400, 'UnsupportedOperation', 'context');
      expectError(await d.post(`/keys/${ec}/sign`, { input: b64(msg), context: 'ctx' }), 400, 'UnsupportedOperation', 'context');
      expect((await d.post(`/keys/${ec}/sign`, { input: b64(msg), context: '' })).status).to.equal(200);
      for (const hashAlgorithm of ['md5', 'sha1', 'SHA1', 'sha3-256', 'sha256', 'sha2-224'])
        expectError(await d.post(`/keys/${ec}/sign`, { input: b64(msg), hashAlgorithm }), 400, 'ValidationError', 'hashAlgorithm', hashAlgorithm);
      expectError(await d.post(`/keys/${ec}/sign`, { input: b64(randomBytes(31)), prehashed: true }), 400, 'ValidationError', 'input');
      expectError(await d.post(`/keys/${ec}/sign`, { input: b64(randomBytes(32)), prehashed: true, hashAlgorithm: 'sha2-384' }), 400, 'ValidationError', 'input');
      expectError(await d.post(`/keys/${rsa}/sign`, { input: b64(randomBytes(64)), prehashed: true }), 400, 'ValidationError', 'input');
      expectError(await d.post(`/keys/${ec}/sign`, { input: b64(msg), signatureAlgorithm: 'pss' }), 400, 'ValidationError', 'signatureAlgorithm');
      expectError(await d.post(`/keys/${rsa}/sign`, { input: b64(msg), signatureAlgorithm: 'raw' }), 400, 'ValidationError', 'signatureAlgorithm');
      expectError(await d.post(`/keys/${rsa}/sign`, { input: b64(msg), prehashed: 'yes' }), 400, 'ValidationError', 'prehashed');
      expectError(await d.post(`/keys/${rsa}/sign`, { input: b64(msg), keyVersion: '2' }), 400, 'ValidationError', 'keyVersion');
      expectError(await d.post(`/keys/${rsa}/sign`, {}), 400, 'ValidationError', 'input');
      expectError(await d.post(`/keys/${rsa}/verify`, { input: b64(msg) }), 400, 'ValidationError', 'signature');
    });
  });

  describe('public-key', () => {
    for (const [type, asym, extra] of [
      ['ed25519', 'ed25519', undefined],
      ['ecdsa-p256', 'ec', 'prime256v1'],
      ['ecdsa-p384', 'ec', 'secp384r1'],
      ['ecdsa-p521', 'ec', 'secp521r1'],
      ['rsa-2048', 'rsa', 2048],
      ['rsa-3072', 'rsa', 3072],
      ['rsa-4096', 'rsa', 4096],
    ] as const)
      it(`${type}: {keys: {"1": SPKI PEM}, keyType} of the right algorithm`, async () => {
        const r = await d.get(`/keys/${k[type].identity}/public-key`);
        expect(r.status).to.equal(200);
        expect(r.body.keyType).to.equal(type);
        expect(Object.keys(r.body.keys)).to.deep.equal(['1']);
        const pem: string = r.body.keys['1'];
        expect(pem).to.match(/^-----BEGIN PUBLIC KEY-----\n[\s\S]+\n-----END PUBLIC KEY-----\n?$/);
        const key = createPublicKey(pem);
        expect(key.asymmetricKeyType).to.equal(asym);
        if (asym === 'ec') expect(key.asymmetricKeyDetails?.namedCurve).to.equal(extra);
        if (asym === 'rsa') {
          expect(key.asymmetricKeyDetails?.modulusLength).to.equal(extra);
          expect(key.asymmetricKeyDetails?.publicExponent).to.equal(65537n);
        }
        // OpenSSL parses it too
        const o = spawnSync('openssl', ['pkey', '-pubin', '-in', file(pem), '-noout', '-text'], { encoding: 'utf8' });
        expect(o.status).to.equal(0);
      });

    it('?version=N selects one; a missing or malformed version → 400 naming version', async () => {
      const id = k['ecdsa-p384'].identity;
      expect(Object.keys((await d.get(`/keys/${id}/public-key?version=1`)).body.keys)).to.deep.equal(['1']);
      for (const v of ['2', '0', 'x', '-1', '1.5'])
        expectError(await d.get(`/keys/${id}/public-key?version=${v}`), 400, 'ValidationError', 'version', v);
    });
  });

  describe('decrypt-asymmetric (RSA-OAEP made by node:crypto with the exported public key)', () => {
    it('decrypts RSA-OAEP SHA-1 (what SoftHSM2 2.6.1 does) for every RSA size', async () => {
      for (const type of ['rsa-2048', 'rsa-3072', 'rsa-4096']) {
        const id = k[type].identity;
        const pem = (await d.get(`/keys/${id}/public-key`)).body.keys['1'];
        const secret = randomBytes(32);
        const ct = publicEncrypt({ key: pem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, secret);
        for (const body of [{ ciphertext: b64(ct), keyVersion: '1' }, { ciphertext: b64(ct), hashFunction: 'SHA1', keyVersion: 1 }]) {
          const r = await d.post(`/keys/${id}/decrypt-asymmetric`, body);
          expect(r.status, `${type} ${JSON.stringify(r.body)}`).to.equal(200);
          expect(r.body.plaintext).to.equal(b64(secret));
        }
      }
    });

    it('an OAEP hash the token cannot do → 400 UnsupportedOperation naming SHA1; unknown hash → 400 ValidationError', async () => {
      const id = k['rsa-2048'].identity;
      const pem = (await d.get(`/keys/${id}/public-key`)).body.keys['1'];
      const ct = publicEncrypt({ key: pem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, Buffer.from('x'));
      for (const hashFunction of ['SHA256', 'SHA384', 'SHA512'])
        expectError(await d.post(`/keys/${id}/decrypt-asymmetric`, { ciphertext: b64(ct), hashFunction, keyVersion: '1' }), 400, 'UnsupportedOperation', 'SHA1');
      expectError(await d.post(`/keys/${id}/decrypt-asymmetric`, { ciphertext: b64(ct), hashFunction: 'MD5', keyVersion: '1' }), 400, 'ValidationError', 'hashFunction');
    });

    it('a ciphertext that is not OAEP-SHA1 under this key → 422 DecryptionFailed, never 5xx', async () => {
      const id = k['rsa-2048'].identity;
      const pem = (await d.get(`/keys/${id}/public-key`)).body.keys['1'];
      const sha256 = publicEncrypt({ key: pem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, Buffer.from('x'));
      const pkcs1 = publicEncrypt({ key: pem, padding: constants.RSA_PKCS1_PADDING }, Buffer.from('x'));
      const otherPem = (await d.get(`/keys/${k['rsa-3072'].identity}/public-key`)).body.keys['1'];
      const otherKey = publicEncrypt({ key: otherPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.from('x'));
      for (const [what, ct] of [
        ['OAEP-SHA256', sha256],
        ['PKCS#1 v1.5', pkcs1],
        ['random bytes', randomBytes(256)],
        ['all zero', Buffer.alloc(256)],
      ] as const)
        expectError(await d.post(`/keys/${id}/decrypt-asymmetric`, { ciphertext: b64(ct), keyVersion: '1' }), 422, 'DecryptionFailed', undefined, what);
      for (const [what, ct] of [
        ['another key (longer modulus)', otherKey],
        ['too short', randomBytes(10)],
        ['empty', Buffer.alloc(0)],
      ] as const) {
        const r = await d.post(`/keys/${id}/decrypt-asymmetric`, { ciphertext: b64(ct), keyVersion: '1' });
        expect(r.status, `${what}: ${JSON.stringify(r.body)}`).to.be.oneOf([400, 422]);
      }
    });

    it('after rotation: keyVersion picks the version whose public key encrypted', async () => {
      const kk = await d.createKey('c oaep rotate', 'rsa-2048');
      const pem1 = (await d.get(`/keys/${kk.identity}/public-key`)).body.keys['1'];
      await d.post(`/keys/${kk.identity}/rotate`);
      const ct = publicEncrypt({ key: pem1, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.from('v1 secret'));
      expect((await d.post(`/keys/${kk.identity}/decrypt-asymmetric`, { ciphertext: b64(ct), keyVersion: '1' })).body.plaintext).to.equal(b64('v1 secret'));
      expectError(await d.post(`/keys/${kk.identity}/decrypt-asymmetric`, { ciphertext: b64(ct), keyVersion: '2' }), 422, 'DecryptionFailed');
      expectError(await d.post(`/keys/${kk.identity}/decrypt-asymmetric`, { ciphertext: b64(ct) }), 400, 'ValidationError', 'keyVersion');
      expectError(await d.post(`/keys/${kk.identity}/decrypt-asymmetric`, { ciphertext: b64(ct), keyVersion: '3' }), 400, 'InvalidCiphertext');
    });
  });

  describe('hmac / verify-hmac', () => {
    for (const [type, len, alg] of [
      ['hmac', 32, 'sha2-256'],
      ['hmac-sha256', 32, 'SHA256'],
      ['hmac-sha384', 48, 'sha2-384'],
      ['hmac-sha512', 64, 'SHA512'],
    ] as const)
      it(`${type}: a ${len}-byte MAC that verifies; wrong input or MAC → valid false; another algorithm → 400`, async () => {
        const id = k[type].identity;
        const r = await d.post(`/keys/${id}/hmac`, { input: b64('message') });
        expect(r.status).to.equal(200);
        expect(r.body.keyVersion).to.equal('1');
        const { data } = versioned(r.body.hmac);
        expect(data.length).to.equal(len);
        // deterministic, and naming its own algorithm gives the same MAC
        expect((await d.post(`/keys/${id}/hmac`, { input: b64('message') })).body.hmac).to.equal(r.body.hmac);
        expect((await d.post(`/keys/${id}/hmac`, { input: b64('message'), algorithm: alg })).body.hmac).to.equal(r.body.hmac);
        expect((await d.post(`/keys/${id}/hmac`, { input: b64('other') })).body.hmac).not.to.equal(r.body.hmac);

        expect((await d.post(`/keys/${id}/verify-hmac`, { input: b64('message'), hmac: r.body.hmac })).body).to.deep.equal({ valid: true, keyVersion: '1' });
        expect((await d.post(`/keys/${id}/verify-hmac`, { input: b64('message'), hmac: r.body.hmac, hashAlgorithm: alg })).body.valid).to.equal(true);
        expect((await d.post(`/keys/${id}/verify-hmac`, { input: b64('messagE'), hmac: r.body.hmac })).body.valid).to.equal(false);
        const flipped = Buffer.from(data);
        flipped[0]! ^= 1;
        for (const mac of [flipped, data.subarray(0, len - 1), Buffer.concat([data, Buffer.from([0])]), Buffer.alloc(0)])
          expect((await d.post(`/keys/${id}/verify-hmac`, { input: b64('message'), hmac: `kms:v1:${b64(mac)}` })).body.valid).to.equal(false);

        const others = ['sha2-256', 'sha2-384', 'sha2-512'].filter((h) => NODE_HASH[h] !== NODE_HASH[alg]);
        for (const h of others) {
          expectError(await d.post(`/keys/${id}/hmac`, { input: b64('message'), algorithm: h }), 400, 'ValidationError', 'algorithm', h);
          expectError(await d.post(`/keys/${id}/verify-hmac`, { input: b64('message'), hmac: r.body.hmac, hashAlgorithm: h }), 400, 'ValidationError', 'hashAlgorithm', h);
        }
        expectError(await d.post(`/keys/${id}/hmac`, { input: b64('m'), algorithm: 'md5' }), 400, 'ValidationError', 'algorithm');
      });

    it('every version computes its own MAC after rotation; old MACs still verify; missing versions → 400', async () => {
      const kk = await d.createKey('c hmac rotate', 'hmac-sha256');
      const m1 = (await d.post(`/keys/${kk.identity}/hmac`, { input: b64('x') })).body.hmac;
      await d.post(`/keys/${kk.identity}/rotate`);
      const m2 = await d.post(`/keys/${kk.identity}/hmac`, { input: b64('x') });
      expect(m2.body.keyVersion).to.equal('2');
      expect(versioned(m2.body.hmac).data.equals(versioned(m1).data)).to.equal(false);
      expect((await d.post(`/keys/${kk.identity}/hmac`, { input: b64('x'), keyVersion: '1' })).body.hmac).to.equal(m1);
      expect((await d.post(`/keys/${kk.identity}/verify-hmac`, { input: b64('x'), hmac: m1 })).body).to.deep.equal({ valid: true, keyVersion: '1' });
      // a v1 MAC relabelled as v2 does not verify
      expect((await d.post(`/keys/${kk.identity}/verify-hmac`, { input: b64('x'), hmac: m1.replace('kms:v1:', 'kms:v2:') })).body.valid).to.equal(false);
      expectError(await d.post(`/keys/${kk.identity}/verify-hmac`, { input: b64('x'), hmac: m1.replace('kms:v1:', 'kms:v3:') }), 400, 'InvalidCiphertext');
      expectError(await d.post(`/keys/${kk.identity}/verify-hmac`, { input: b64('x'), hmac: 'deadbeef' }), 400, 'InvalidCiphertext');
      expectError(await d.post(`/keys/${kk.identity}/hmac`, { input: b64('x'), keyVersion: '3' }), 400, 'ValidationError', 'keyVersion');
    });
  });

  describe('operation / key-type mismatches → 400 UnsupportedOperation', () => {
    const ops: [string, string, (ctx: { ct: string; sig: string; mac: string }) => unknown, string[]][] = [
      ['encrypt', 'POST', () => ({ plaintext: b64('x') }), ['hmac', 'ed25519', 'ecdsa-p256', 'rsa-2048']],
      ['decrypt', 'POST', (c) => ({ ciphertext: c.ct }), ['hmac', 'ed25519', 'rsa-2048']],
      ['re-encrypt', 'POST', (c) => ({ ciphertext: c.ct }), ['hmac-sha512', 'ecdsa-p384']],
      ['generate-data-key', 'POST', () => ({}), ['hmac', 'ecdsa-p521', 'rsa-2048']],
      ['sign', 'POST', () => ({ input: b64('x') }), ['aes256-gcm96', 'hmac']],
      ['verify', 'POST', (c) => ({ input: b64('x'), signature: c.sig }), ['aes128-gcm96', 'hmac-sha384']],
      ['hmac', 'POST', () => ({ input: b64('x') }), ['aes256-gcm96', 'ed25519', 'rsa-2048']],
      ['verify-hmac', 'POST', (c) => ({ input: b64('x'), hmac: c.mac }), ['aes256-gcm96', 'ecdsa-p256']],
      ['public-key', 'GET', () => undefined, ['aes256-gcm96', 'hmac']],
      ['decrypt-asymmetric', 'POST', () => ({ ciphertext: b64(randomBytes(256)), keyVersion: '1' }), ['aes256-gcm96', 'hmac', 'ed25519', 'ecdsa-p256']],
    ];
    for (const [op, method, body, types] of ops)
      it(`${op} on ${types.join(', ')}`, async () => {
        const ct = (await d.post(`/keys/${k['aes256-gcm96'].identity}/encrypt`, { plaintext: b64('x') })).body.ciphertext;
        const sig = (await d.post(`/keys/${k['ecdsa-p256'].identity}/sign`, { input: b64('x') })).body.signature;
        const mac = (await d.post(`/keys/${k.hmac.identity}/hmac`, { input: b64('x') })).body.hmac;
        for (const t of types) {
          const r = await d.call(method, `/v1/kms/nl-01/keys/${k[t].identity}/${op}`, body({ ct, sig, mac }));
          expectError(r, 400, 'UnsupportedOperation', undefined, `${op} on ${t}`);
        }
      });
  });

  describe('disabled and pending-deletion keys → 409 KeyStateConflict for every operation', () => {
    it('every operation of every key family', async () => {
      const made = {
        aes: await d.createKey('c state aes', 'aes256-gcm96'),
        hmac: await d.createKey('c state hmac', 'hmac-sha256'),
        ec: await d.createKey('c state ec', 'ecdsa-p256'),
        rsa: await d.createKey('c state rsa', 'rsa-2048'),
      };
      const ct = (await d.post(`/keys/${made.aes.identity}/encrypt`, { plaintext: b64('x') })).body.ciphertext;
      const sig = (await d.post(`/keys/${made.ec.identity}/sign`, { input: b64('x') })).body.signature;
      const mac = (await d.post(`/keys/${made.hmac.identity}/hmac`, { input: b64('x') })).body.hmac;
      const pem = (await d.get(`/keys/${made.rsa.identity}/public-key`)).body.keys['1'];
      const oaep = publicEncrypt({ key: pem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.from('x'));
      const calls: [string, string, string, unknown][] = [
        ['aes', 'POST', 'encrypt', { plaintext: b64('x') }],
        ['aes', 'POST', 'encrypt', { batch: [{ plaintext: b64('x') }] }],
        ['aes', 'POST', 'decrypt', { ciphertext: ct }],
        ['aes', 'POST', 'decrypt', { batch: [{ ciphertext: ct }] }],
        ['aes', 'POST', 're-encrypt', { ciphertext: ct }],
        ['aes', 'POST', 'generate-data-key', {}],
        ['ec', 'POST', 'sign', { input: b64('x') }],
        ['ec', 'POST', 'verify', { input: b64('x'), signature: sig }],
        ['ec', 'GET', 'public-key', undefined],
        ['hmac', 'POST', 'hmac', { input: b64('x') }],
        ['hmac', 'POST', 'verify-hmac', { input: b64('x'), hmac: mac }],
        ['rsa', 'POST', 'decrypt-asymmetric', { ciphertext: b64(oaep), keyVersion: '1' }],
      ];
      const run = async (state: string) => {
        for (const [fam, method, op, body] of calls) {
          const r = await d.call(method, `/v1/kms/nl-01/keys/${made[fam as keyof typeof made].identity}/${op}`, body);
          expectError(r, 409, 'KeyStateConflict', undefined, `${op} on ${state} ${fam}`);
        }
      };
      for (const m of Object.values(made)) await d.post(`/keys/${m.identity}/disable`);
      await run('disabled');
      for (const m of Object.values(made)) await d.del(`/keys/${m.identity}`);
      await run('pending_deletion');
      // once active again, the same material answers again
      for (const m of Object.values(made)) await d.post(`/keys/${m.identity}/cancel-deletion`);
      expect((await d.post(`/keys/${made.aes.identity}/decrypt`, { ciphertext: ct })).body.plaintext).to.equal(b64('x'));
      expect((await d.post(`/keys/${made.ec.identity}/verify`, { input: b64('x'), signature: sig })).body.valid).to.equal(true);
      expect((await d.post(`/keys/${made.hmac.identity}/verify-hmac`, { input: b64('x'), hmac: mac })).body.valid).to.equal(true);
      expect((await d.post(`/keys/${made.rsa.identity}/decrypt-asymmetric`, { ciphertext: b64(oaep), keyVersion: '1' })).body.plaintext).to.equal(b64('x'));
    });
  });

  describe('malformed base64 and oversize bodies → 4xx', () => {
    const badB64 = ['abc', '@@@@', 'YQ', '-_-_', 'YWJj\n', 'YW Jj', '====', 'Y===', '\u00e9\u00e9\u00e9\u00e9'];
    it('every binary field rejects non-standard base64 with 400 ValidationError naming the field', async () => {
      const aes = k['aes256-gcm96'].identity;
      const ec = k['ecdsa-p256'].identity;
      const hm = k.hmac.identity;
      const rsa = k['rsa-2048'].identity;
      for (const bad of badB64) {
        const w = JSON.stringify(bad);
        expectError(await d.post(`/keys/${aes}/encrypt`, { plaintext: bad }), 400, 'ValidationError', 'plaintext', w);
        expectError(await d.post(`/keys/${aes}/encrypt`, { plaintext: 'AAAA', aad: bad }), 400, 'ValidationError', 'aad', w);
        expectError(await d.post(`/keys/${aes}/decrypt`, { ciphertext: 'kms:v1:AAAA', aad: bad }), 400, 'ValidationError', 'aad', w);
        expectError(await d.post(`/keys/${aes}/generate-data-key`, { aad: bad }), 400, 'ValidationError', 'aad', w);
        expectError(await d.post(`/keys/${ec}/sign`, { input: bad }), 400, 'ValidationError', 'input', w);
        expectError(await d.post(`/keys/${ec}/verify`, { input: bad, signature: 'kms:v1:AAAA' }), 400, 'ValidationError', 'input', w);
        expectError(await d.post(`/keys/${hm}/hmac`, { input: bad }), 400, 'ValidationError', 'input', w);
        expectError(await d.post(`/keys/${hm}/verify-hmac`, { input: bad, hmac: 'kms:v1:AAAA' }), 400, 'ValidationError', 'input', w);
        expectError(await d.post(`/keys/${rsa}/decrypt-asymmetric`, { ciphertext: bad, keyVersion: '1' }), 400, 'ValidationError', 'ciphertext', w);
      }
    });

    it('wrong JSON types in crypto bodies → 400 ValidationError naming the field', async () => {
      const aes = k['aes256-gcm96'].identity;
      expectError(await d.post(`/keys/${aes}/encrypt`, { plaintext: 123 }), 400, 'ValidationError', 'plaintext');
      expectError(await d.post(`/keys/${aes}/encrypt`, { plaintext: ['AAAA'] }), 400, 'ValidationError', 'plaintext');
      expectError(await d.post(`/keys/${aes}/decrypt`, { ciphertext: { v: 1 } }), 400, 'ValidationError', 'ciphertext');
      expectError(await d.post(`/keys/${aes}/encrypt`, { plaintext: 'AAAA', unknown: true }), 400, 'ValidationError', 'unknown');
      expectError(await d.post(`/keys/${k.hmac.identity}/verify-hmac`, { input: 'AAAA', hmac: 5 }), 400, 'ValidationError', 'hmac');
      expectError(await d.post(`/keys/${k['ecdsa-p256'].identity}/verify`, { input: 'AAAA', signature: null }), 400, 'ValidationError', 'signature');
      expectError(await d.post(`/keys/${aes}/re-encrypt`, { ciphertext: 'kms:v1:AAAA', destinationKey: 7 }), 400, 'ValidationError', 'destinationKey');
    });

    it('bodies over limits.maxBodyBytes → 413 PayloadTooLarge on every crypto route', async () => {
      const big = b64(randomBytes(60_000));
      const routes: [string, unknown][] = [
        [`${k['aes256-gcm96'].identity}/encrypt`, { plaintext: big }],
        [`${k['aes256-gcm96'].identity}/decrypt`, { ciphertext: `kms:v1:${big}` }],
        [`${k['aes256-gcm96'].identity}/encrypt`, { batch: [{ plaintext: big }] }],
        [`${k['ecdsa-p256'].identity}/sign`, { input: big }],
        [`${k.hmac.identity}/hmac`, { input: big }],
      ];
      for (const [p, body] of routes) expectError(await d.post(`/keys/${p}`, body), 413, 'PayloadTooLarge', undefined, p);
      // just below the limit is fine
      const ok = await d.post(`/keys/${k['aes256-gcm96'].identity}/encrypt`, { plaintext: b64(randomBytes(40_000)) });
      expect(ok.status).to.equal(200);
      expect(d.alive).to.equal(true);
    });
  });

  describe('the fast path (node:http) and Express serve an operation alike', () => {
    // A query string sends the same request through Express; a plain one takes the fast path.
    const both = async (p: string, body: unknown, o: Parameters<Daemon['post']>[2] = {}) => [await d.post(p, body, o), await d.post(`${p}?via=express`, body, o)];

    it('encrypt on either path decrypts on the other; the audit records both alike', async () => {
      const id = k.aesOther.identity;
      const [fast, slow] = await both(`/keys/${id}/encrypt`, { plaintext: b64('either way'), aad: b64('ctx') }, { headers: { 'x-request-id': 'path-pair' } });
      for (const r of [fast!, slow!]) {
        expect(r.status).to.equal(200);
        expect(Object.keys(r.body)).to.deep.equal(['ciphertext', 'keyVersion']);
        expect(r.headers.get('content-type')).to.equal('application/json; charset=utf-8');
        expect(r.headers.get('x-request-id')).to.equal('path-pair');
      }
      expect((await d.post(`/keys/${id}/decrypt?via=express`, { ciphertext: fast!.body.ciphertext, aad: b64('ctx') })).body.plaintext).to.equal(b64('either way'));
      expect((await d.post(`/keys/${id}/decrypt`, { ciphertext: slow!.body.ciphertext, aad: b64('ctx') })).body.plaintext).to.equal(b64('either way'));
      const a = await d.get(`/audit?keyIdentity=${id}&action=kms.encrypt`);
      const rows = a.body.events.filter((e: any) => e.requestId === 'path-pair');
      expect(rows).to.have.length(2);
      expect(rows.map((e: any) => [e.outcome, e.keyVersion, e.principal])).to.deep.equal([['success', '1', 'admin'], ['success', '1', 'admin']]);
    });

    it('errors are identical on both paths: malformed JSON, validation, authentication, unknown key, wrong key type', async () => {
      const id = k.aesOther.identity;
      const strip = (r: Reply) => [r.status, r.body.code, r.body.message];
      const pairs: [string, unknown, Parameters<Daemon['post']>[2]][] = [
        [`/keys/${id}/encrypt`, undefined, { raw: '{"plaintext":' }],
        [`/keys/${id}/encrypt`, { plaintext: 5 }, {}],
        [`/keys/${id}/encrypt`, {}, {}],
        [`/keys/${id}/encrypt`, { plaintext: 'aGk=' }, { token: 'not-a-token' }],
        [`/keys/${id}/encrypt`, { plaintext: 'aGk=' }, { token: null }],
        [`/keys/${id}/encrypt`, { plaintext: 'aGk=' }, { org: null }],
        [`/keys/no-such-key/encrypt`, { plaintext: 'aGk=' }, {}],
        [`/keys/${k['ed25519'].identity}/encrypt`, { plaintext: 'aGk=' }, {}],
        [`/keys/${id}/sign`, { input: 'aGk=' }, {}],
      ];
      for (const [p, body, o] of pairs) {
        const [fast, slow] = await both(p, body, o);
        expect(fast!.status, `${p} ${JSON.stringify(fast!.body)}`).to.be.within(400, 499);
        expect(strip(fast!), p).to.deep.equal(strip(slow!));
      }
      // an unknown region is 404 on both, too
      const [fast, slow] = await both(`/keys/${id}/encrypt`, { plaintext: 'aGk=' }, { region: 'xx-99' });
      expect(strip(fast!)).to.deep.equal(strip(slow!));
      expect(fast!.status).to.equal(404);
    });
  });

  describe('audit of cryptographic operations', () => {
    it('records the operation and version, never the plaintext', async () => {
      const id = k.aesOther.identity;
      const secret = 'top-secret-plaintext-marker';
      await d.post(`/keys/${id}/encrypt`, { plaintext: b64(secret) }, { headers: { 'x-request-id': 'crypto-audit-1' } });
      const r = await d.get(`/audit?keyIdentity=${id}&action=kms.encrypt`);
      const ev = r.body.events.find((e: any) => e.requestId === 'crypto-audit-1');
      expect(ev).to.include({ action: 'kms.encrypt', outcome: 'success', keyVersion: '1', principal: 'admin' });
      expect(JSON.stringify(r.body)).not.to.include(secret);
      expect(JSON.stringify(r.body)).not.to.include(b64(secret));
    });
  });
});
