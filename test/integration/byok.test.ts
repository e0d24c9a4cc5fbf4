import { expect } from 'chai';
import { constants, createDecipheriv, createHmac, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { b64, OpenSsl, unb64, versionedPayload } from '../helpers/byok.js';
import { TestStack, waitFor, type Daemon } from '../helpers/stack.js';
import { ownMongoUri } from './keys-token.js';
import { sourceToken } from '../helpers/byok-source.js';
import { inspectToken } from '../helpers/token-inspect.js';

const TOKEN_LABEL = 'kmsd-nl-01';

/** Decrypts a kmsd AES-GCM ciphertext offline: base64 part = IV (12) ‖ ciphertext ‖ tag (16). */
function decryptOffline(material: Buffer, ciphertext: string, aad: Buffer): Buffer {
  const { data } = versionedPayload(ciphertext);
  const d = createDecipheriv(material.length === 16 ? 'aes-128-gcm' : 'aes-256-gcm', material, data.subarray(0, 12));
  d.setAAD(aad);
  d.setAuthTag(data.subarray(data.length - 16));
  return Buffer.concat([d.update(data.subarray(12, data.length - 16)), d.final()]);
}

const spkiDer = (k: KeyObject) => k.export({ type: 'spki', format: 'der' });

describe('BYOK import', function () {
  this.timeout(180_000);
  let stack: TestStack;
  let d: Daemon;
  let ssl: OpenSsl;
  let wrappingPem: string;

  const tokenObjects = () => inspectToken(stack, TOKEN_LABEL);

  before(async () => {
    stack = await TestStack.create({
      name: 'byok', mongodbUri: ownMongoUri('byok'),
      principals: [
        { name: 'admin', roles: ['admin'] },
        { name: 'keyadmin', roles: ['key-admin'] },
        { name: 'crypto', roles: ['crypto-user'] },
      ],
    });
    d = await stack.start();
    ssl = new OpenSsl();
  });
  after(async () => {
    ssl?.cleanup();
    await stack?.cleanup();
  });

  describe('regional wrapping key (importKeyMaterial on POST /keys)', () => {
    it('GET wrapping-key answers an RSA-4096 SPKI PEM, RSA_AES_KEY_WRAP and the token’s OAEP hashes (SHA1 on SoftHSM2 2.6.1), the same on every call', async () => {
      const [a, b] = await Promise.all([d.get('/wrapping-key'), d.get('/wrapping-key', { token: stack.token('keyadmin') })]);
      expect(a.status, JSON.stringify(a.body)).to.equal(200);
      expect(b.status).to.equal(200);
      expect(a.body.algorithm).to.equal('RSA_AES_KEY_WRAP');
      expect(a.body.hashFunctions).to.deep.equal(['SHA1']);
      const pub = createPublicKey(a.body.publicKey);
      expect(pub.asymmetricKeyType).to.equal('rsa');
      expect(pub.asymmetricKeyDetails!.modulusLength).to.equal(4096);
      expect(b.body.publicKey).to.equal(a.body.publicKey);
      wrappingPem = a.body.publicKey;
      // Concurrent first use made exactly one pair: its private half never leaves the token.
      const pairs = tokenObjects().filter((o) => o.id.startsWith('kmsd/w/'));
      expect(pairs.filter((o) => o.cls === 'private')).to.have.length(1);
      expect(pairs.find((o) => o.cls === 'private')).to.include({ sensitive: true, extractable: false, token: true });
    });

    it('a crypto-user may not fetch the wrapping key (403 Forbidden)', async () => {
      const r = await d.get('/wrapping-key', { token: stack.token('crypto') });
      expect(r.status).to.equal(403);
      expect(r.body.code).to.equal('Forbidden');
    });

    for (const [keyType, bytes] of [
      ['aes256-gcm96', 32],
      ['aes128-gcm96', 16],
    ] as const)
      it(`imports ${keyType} material wrapped by the OpenSSL CLI; kmsd ciphertext decrypts offline with the material`, async () => {
        const material = ssl.rand(bytes);
        const r = await d.post('/keys', { name: `byok-${keyType}`, keyType, importKeyMaterial: b64(ssl.twoPart(wrappingPem, material)) });
        expect(r.status, JSON.stringify(r.body)).to.equal(201);
        expect(r.body).to.include({ imported: true, allowRotation: false, keyType, latestVersion: 1 });
        const aad = Buffer.from('context-1');
        const e = await d.post(`/keys/${r.body.identity}/encrypt`, { plaintext: b64('escrow check'), aad: b64(aad) });
        expect(e.status).to.equal(200);
        expect(decryptOffline(material, e.body.ciphertext, aad).toString()).to.equal('escrow check');
        // The imported version is a token object with the protection of a generated one.
        const obj = tokenObjects().find((o) => o.id.startsWith(`kmsd/k/${r.body.identity}/`) && o.cls === 'secret');
        expect(obj).to.include({ sensitive: true, extractable: false, token: true, private: true });
      });

    for (const [keyType, bytes, hash] of [
      ['hmac-sha256', 32, 'sha256'],
      ['hmac-sha512', 64, 'sha512'],
      ['hmac', 45, 'sha256'],
    ] as const)
      it(`imports ${keyType} material (${bytes} bytes): kmsd's HMAC equals node:crypto's with the material`, async () => {
        const material = ssl.rand(bytes);
        const r = await d.post('/keys', { name: `byok-${keyType}-${bytes}`, keyType, importKeyMaterial: b64(ssl.twoPart(wrappingPem, material)) });
        expect(r.status, JSON.stringify(r.body)).to.equal(201);
        const input = Buffer.from('known answer');
        const h = await d.post(`/keys/${r.body.identity}/hmac`, { input: b64(input) });
        expect(h.status).to.equal(200);
        expect(versionedPayload(h.body.hmac).data.equals(createHmac(hash, material).update(input).digest())).to.equal(true);
      });

    for (const [keyType, kind] of [
      ['rsa-2048', 'rsa-2048'],
      ['ecdsa-p256', 'ec-P-256'],
      ['ecdsa-p384', 'ec-P-384'],
      ['ecdsa-p521', 'ec-P-521'],
    ] as const)
      it(`imports ${keyType} PKCS#8 from openssl genpkey: public-key is the material's, signatures cross-verify with node:crypto`, async () => {
        const k = ssl.genpkey(kind);
        const r = await d.post('/keys', { name: `byok-${keyType}`, keyType, importKeyMaterial: b64(ssl.twoPart(wrappingPem, k.der)) });
        expect(r.status, JSON.stringify(r.body)).to.equal(201);
        const id = r.body.identity;
        const pk = await d.get(`/keys/${id}/public-key`);
        expect(pk.status).to.equal(200);
        expect(spkiDer(createPublicKey(pk.body.keys['1'])).equals(spkiDer(k.publicKey))).to.equal(true);

        const input = Buffer.from('signed by an imported key');
        const s = await d.post(`/keys/${id}/sign`, { input: b64(input) });
        expect(s.status).to.equal(200);
        const sig = versionedPayload(s.body.signature).data;
        const rsa = keyType.startsWith('rsa');
        const opts = rsa ? { key: k.publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 } : k.publicKey;
        // The contract's default hashes: RSA and P-256 SHA-256, P-384 SHA-384, P-521 SHA-512.
        const hash = keyType === 'ecdsa-p384' ? 'sha384' : keyType === 'ecdsa-p521' ? 'sha512' : 'sha256';
        expect(verify(hash, input, opts, sig)).to.equal(true);

        const local = sign(hash, input, rsa ? { key: k.key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 } : k.key);
        const v = await d.post(`/keys/${id}/verify`, { input: b64(input), signature: `kms:v1:${b64(local)}` });
        expect(v.body).to.deep.equal({ valid: true });
        const objs = tokenObjects().filter((o) => o.id.startsWith(`kmsd/k/${id}/`));
        expect(objs.map((o) => o.cls).sort()).to.deep.equal(['private', 'public']);
        expect(objs.find((o) => o.cls === 'private')).to.include({ sensitive: true, extractable: false });
      });

    it('refuses an OAEP hash the token cannot do: hashFunction SHA256 → 400 UnsupportedOperation naming SHA1', async () => {
      const material = ssl.rand(32);
      const r = await d.post('/keys', {
        name: 'byok-sha256',
        keyType: 'aes256-gcm96',
        hashFunction: 'SHA256',
        importKeyMaterial: b64(ssl.twoPart(wrappingPem, material, 'sha256')),
      });
      expect(r.status).to.equal(400);
      expect(r.body.code).to.equal('UnsupportedOperation');
      expect(r.body.message).to.contain('SHA1');
    });

    it('refuses ed25519 import with 400 UnsupportedOperation (the token cannot unwrap it nor derive its public key)', async () => {
      const k = ssl.genpkey('ed25519');
      const r = await d.post('/keys', { name: 'byok-ed', keyType: 'ed25519', importKeyMaterial: b64(ssl.twoPart(wrappingPem, k.der)) });
      expect(r.status).to.equal(400);
      expect(r.body.code).to.equal('UnsupportedOperation');
      expect(r.body.message).to.contain('ed25519');
    });

    it('rejects material that does not fit the key type or does not unwrap with 400 ValidationError, leaving nothing on the token', async () => {
      const before = tokenObjects().length;
      const other = ssl.rsaPair(4096);
      const cases: [string, string, Buffer, RegExp][] = [
        ['aes256-gcm96', '16 bytes for aes256', ssl.twoPart(wrappingPem, ssl.rand(16)), /must be 32 bytes.*16 bytes/],
        ['aes256-gcm96', '31 bytes for aes256', ssl.twoPart(wrappingPem, ssl.rand(31)), /must be 32 bytes.*25 to 31 bytes/],
        ['aes128-gcm96', '24 bytes for aes128', ssl.twoPart(wrappingPem, ssl.rand(24)), /must be 16 bytes.*24 bytes/],
        ['hmac-sha256', '31 bytes for hmac', ssl.twoPart(wrappingPem, ssl.rand(31)), /at least 32 bytes/],
        ['rsa-3072', 'a 2048-bit key for rsa-3072', ssl.twoPart(wrappingPem, ssl.genpkey('rsa-2048').der), /2048-bit RSA key/],
        ['ecdsa-p384', 'a P-256 key for ecdsa-p384', ssl.twoPart(wrappingPem, ssl.genpkey('ec-P-256').der), /not a P-384 key/],
        ['rsa-2048', 'an EC key for rsa-2048', ssl.twoPart(wrappingPem, ssl.genpkey('ec-P-256').der), /importKeyMaterial: AES key unwrap/],
        ['rsa-2048', 'a PKCS#1 (not PKCS#8) RSA key', ssl.twoPart(wrappingPem, ssl.traditionalDer('rsa-2048')), /importKeyMaterial: AES key unwrap/],
        ['aes256-gcm96', 'material wrapped for another RSA key', ssl.twoPart(other.publicPem, ssl.rand(32)), /RSA-OAEP \(SHA1\) unwrap/],
        ['aes256-gcm96', 'a corrupted AES-KWP part', Buffer.concat([ssl.twoPart(wrappingPem, ssl.rand(32)).subarray(0, 520), Buffer.alloc(32, 7)]), /AES key unwrap/],
        ['aes256-gcm96', 'a truncated blob', ssl.twoPart(wrappingPem, ssl.rand(32)).subarray(0, 515), /expected the RSA-OAEP part \(512 bytes/],
      ];
      for (const [keyType, what, blob, message] of cases) {
        const r = await d.post('/keys', { name: `bad-${what}`, keyType, importKeyMaterial: b64(blob) });
        expect(r.status, `${what}: ${JSON.stringify(r.body)}`).to.equal(400);
        expect(r.body.code, what).to.equal('ValidationError');
        expect(r.body.message, what).to.match(message);
      }
      const notBase64 = await d.post('/keys', { name: 'bad-b64', keyType: 'aes256-gcm96', importKeyMaterial: '%%%' });
      expect(notBase64.status).to.equal(400);
      expect(tokenObjects().length).to.equal(before);
      const list = await d.get('/keys');
      expect(list.body.filter((k: { name: string }) => k.name.startsWith('bad-'))).to.have.length(0);
    });

    it('allowRotation decides rotation: without it rotate → 409 and keyRotationEnabled → 400; with it rotate adds a generated version', async () => {
      const fixed = await d.post('/keys', { name: 'byok-fixed', keyType: 'aes256-gcm96', importKeyMaterial: b64(ssl.twoPart(wrappingPem, ssl.rand(32))) });
      expect(fixed.status).to.equal(201);
      const rot = await d.post(`/keys/${fixed.body.identity}/rotate`);
      expect(rot.status).to.equal(409);
      expect(rot.body.code).to.equal('KeyStateConflict');
      const sched = await d.post('/keys', {
        name: 'byok-sched',
        keyType: 'aes256-gcm96',
        keyRotationEnabled: true,
        rotationPeriodInDays: 30,
        importKeyMaterial: b64(ssl.twoPart(wrappingPem, ssl.rand(32))),
      });
      expect(sched.status).to.equal(400);
      expect(sched.body.message).to.contain('allowRotation');

      const free = await d.post('/keys', {
        name: 'byok-rotating',
        keyType: 'aes256-gcm96',
        allowRotation: true,
        importKeyMaterial: b64(ssl.twoPart(wrappingPem, ssl.rand(32))),
      });
      expect(free.status).to.equal(201);
      expect(free.body.allowRotation).to.equal(true);
      const rotated = await d.post(`/keys/${free.body.identity}/rotate`);
      expect(rotated.status).to.equal(200);
      expect(rotated.body.latestVersion).to.equal(2);
    });

    it('importing needs create and import permissions: a crypto-user gets 403', async () => {
      const r = await d.post(
        '/keys',
        { name: 'byok-denied', keyType: 'aes256-gcm96', importKeyMaterial: b64(ssl.twoPart(wrappingPem, ssl.rand(32))) },
        { token: stack.token('crypto') },
      );
      expect(r.status).to.equal(403);
    });
  });

  describe('single-use import tokens', () => {
    const params = (keyType: string, wrappingAlgorithm: string, token?: string) =>
      d.post('/keys/import-parameters', { keyType, wrappingAlgorithm }, token ? { token } : undefined);
    const importPairs = () => tokenObjects().filter((o) => o.id.startsWith('kmsd/i/'));
    /** The token's import private key whose modulus is the one of this public key, if still there. */
    const importPairOf = (publicPem: string) => {
      const n = Buffer.from(createPublicKey(publicPem).export({ format: 'jwk' }).n!, 'base64url').toString('hex');
      return sourceToken<{ id: string; modulus: string }[]>(stack, TOKEN_LABEL, { op: 'rsa-private-keys', idPrefix: 'kmsd/i/' }).find((o) => o.modulus === n);
    };

    it('import-parameters makes a fresh RSA-3072 pair in the token and a token expiring 24 h later on the daemon clock', async () => {
      const before = (await d.call('GET', '/v1/testing/clock', undefined, { org: null })).body.now;
      const p = await params('aes256-gcm96', 'RSA_OAEP_SHA1');
      const after = (await d.call('GET', '/v1/testing/clock', undefined, { org: null })).body.now;
      expect(p.status, JSON.stringify(p.body)).to.equal(200);
      expect(p.body.wrappingAlgorithm).to.equal('RSA_OAEP_SHA1');
      expect(p.body.importToken).to.be.a('string').with.length.greaterThan(40);
      expect(createPublicKey(p.body.wrappingPublicKeyPem).asymmetricKeyDetails!.modulusLength).to.equal(3072);
      const exp = Date.parse(p.body.expiresAt);
      expect(exp - Date.parse(before)).to.be.at.least(24 * 3600_000);
      expect(exp - Date.parse(after)).to.be.at.most(24 * 3600_000);
      const p2 = await params('aes256-gcm96', 'RSA_OAEP_SHA1');
      expect(p2.body.wrappingPublicKeyPem).not.to.equal(p.body.wrappingPublicKeyPem);
      expect(p2.body.importToken).not.to.equal(p.body.importToken);
      const priv = importPairs().filter((o) => o.cls === 'private');
      expect(priv.length).to.be.at.least(2);
      for (const o of priv) expect(o).to.include({ sensitive: true, extractable: false, token: true });
    });

    for (const [keyType, bytes, alg] of [
      ['aes256-gcm96', 32, 'RSA_OAEP_SHA1'],
      ['aes128-gcm96', 16, 'RSA_OAEP_SHA1'],
      ['aes256-gcm96', 32, 'RSA_AES_KEY_WRAP_SHA1'],
    ] as const)
      it(`imports ${keyType} with ${alg} (OpenSSL-made); the ciphertext decrypts offline and the import pair is destroyed`, async () => {
        const p = await params(keyType, alg);
        const material = ssl.rand(bytes);
        const wrapped = alg === 'RSA_OAEP_SHA1' ? ssl.oaepEncrypt(p.body.wrappingPublicKeyPem, material) : ssl.twoPart(p.body.wrappingPublicKeyPem, material);
        const r = await d.post('/keys/import', { name: `tok-${keyType}-${alg}`, keyType, importToken: p.body.importToken, wrappedKeyMaterial: b64(wrapped) });
        expect(r.status, JSON.stringify(r.body)).to.equal(201);
        expect(r.body).to.include({ imported: true, keyType });
        const e = await d.post(`/keys/${r.body.identity}/encrypt`, { plaintext: b64('via import token') });
        expect(decryptOffline(material, e.body.ciphertext, Buffer.alloc(0)).toString()).to.equal('via import token');
        expect(importPairOf(p.body.wrappingPublicKeyPem), 'the used import pair is destroyed').to.equal(undefined);
      });

    for (const [keyType, bytes, hash, alg] of [
      ['hmac-sha384', 48, 'sha384', 'RSA_OAEP_SHA1'],
      ['hmac-sha256', 40, 'sha256', 'RSA_AES_KEY_WRAP_SHA1'],
    ] as const)
      it(`imports ${keyType} with ${alg}: HMAC equals node:crypto's`, async () => {
        const p = await params(keyType, alg);
        const material = ssl.rand(bytes);
        const wrapped = alg === 'RSA_OAEP_SHA1' ? ssl.oaepEncrypt(p.body.wrappingPublicKeyPem, material) : ssl.twoPart(p.body.wrappingPublicKeyPem, material);
        const r = await d.post('/keys/import', { name: `tok-${keyType}`, keyType, importToken: p.body.importToken, wrappedKeyMaterial: b64(wrapped) });
        expect(r.status, JSON.stringify(r.body)).to.equal(201);
        const h = await d.post(`/keys/${r.body.identity}/hmac`, { input: b64('kat') });
        expect(versionedPayload(h.body.hmac).data.equals(createHmac(hash, material).update('kat').digest())).to.equal(true);
      });

    for (const [keyType, kind] of [
      ['rsa-3072', 'rsa-3072'],
      ['ecdsa-p256', 'ec-P-256'],
    ] as const)
      it(`imports ${keyType} PKCS#8 with RSA_AES_KEY_WRAP_SHA1; public-key is the material's`, async () => {
        const p = await params(keyType, 'RSA_AES_KEY_WRAP_SHA1');
        const k = ssl.genpkey(kind);
        const r = await d.post('/keys/import', {
          name: `tok-${keyType}`,
          keyType,
          importToken: p.body.importToken,
          wrappedKeyMaterial: b64(ssl.twoPart(p.body.wrappingPublicKeyPem, k.der)),
        });
        expect(r.status, JSON.stringify(r.body)).to.equal(201);
        const pk = await d.get(`/keys/${r.body.identity}/public-key`);
        expect(spkiDer(createPublicKey(pk.body.keys['1'])).equals(spkiDer(k.publicKey))).to.equal(true);
      });

    it('offers only what the token can: RSA_OAEP_SHA256 → 400 UnsupportedOperation naming the SHA1 algorithms; RSA_OAEP_* for an asymmetric key → 400', async () => {
      const a = await params('aes256-gcm96', 'RSA_OAEP_SHA256');
      expect(a.status).to.equal(400);
      expect(a.body.code).to.equal('UnsupportedOperation');
      expect(a.body.message).to.contain('RSA_OAEP_SHA1').and.contain('RSA_AES_KEY_WRAP_SHA1');
      const b = await params('aes256-gcm96', 'RSA_AES_KEY_WRAP_SHA256');
      expect(b.body.code).to.equal('UnsupportedOperation');
      const c = await params('rsa-2048', 'RSA_OAEP_SHA1');
      expect(c.status).to.equal(400);
      expect(c.body.code).to.equal('ValidationError');
      expect(c.body.message).to.contain('RSA_AES_KEY_WRAP_SHA1');
      const e = await params('ed25519', 'RSA_AES_KEY_WRAP_SHA1');
      expect(e.body.code).to.equal('UnsupportedOperation');
      const bad = await params('aes256-gcm96', 'RSA_PKCS1');
      expect(bad.status).to.equal(400);
      expect(bad.body.code).to.equal('ValidationError');
      const denied = await params('aes256-gcm96', 'RSA_OAEP_SHA1', stack.token('crypto'));
      expect(denied.status).to.equal(403);
    });

    it('a token is single-use: the second import with it → 400 "already used"', async () => {
      const p = await params('aes256-gcm96', 'RSA_OAEP_SHA1');
      const wrapped = b64(ssl.oaepEncrypt(p.body.wrappingPublicKeyPem, ssl.rand(32)));
      const first = await d.post('/keys/import', { name: 'tok-once', keyType: 'aes256-gcm96', importToken: p.body.importToken, wrappedKeyMaterial: wrapped });
      expect(first.status).to.equal(201);
      const again = await d.post('/keys/import', { name: 'tok-twice', keyType: 'aes256-gcm96', importToken: p.body.importToken, wrappedKeyMaterial: wrapped });
      expect(again.status).to.equal(400);
      expect(again.body.code).to.equal('ValidationError');
      expect(again.body.message).to.contain('already used');
      expect(importPairOf(p.body.wrappingPublicKeyPem), 'the pair of a used token is destroyed').to.equal(undefined);
    });

    it('a token of another key type → 400 naming it, and the token stays usable for its own type', async () => {
      const p = await params('aes256-gcm96', 'RSA_OAEP_SHA1');
      const wrapped = b64(ssl.oaepEncrypt(p.body.wrappingPublicKeyPem, ssl.rand(32)));
      const wrong = await d.post('/keys/import', { name: 'tok-wrongtype', keyType: 'hmac-sha256', importToken: p.body.importToken, wrappedKeyMaterial: wrapped });
      expect(wrong.status).to.equal(400);
      expect(wrong.body.message).to.contain('issued for keyType aes256-gcm96');
      const right = await d.post('/keys/import', { name: 'tok-righttype', keyType: 'aes256-gcm96', importToken: p.body.importToken, wrappedKeyMaterial: wrapped });
      expect(right.status).to.equal(201);
    });

    it('undecryptable material → 400 and uses the token up (no decryption oracle); unknown tokens and tokens of another organisation → 400', async () => {
      const p = await params('aes256-gcm96', 'RSA_OAEP_SHA1');
      const junk = await d.post('/keys/import', { name: 'tok-junk', keyType: 'aes256-gcm96', importToken: p.body.importToken, wrappedKeyMaterial: b64(ssl.rand(384)) });
      expect(junk.status).to.equal(400);
      expect(junk.body.code).to.equal('ValidationError');
      expect(junk.body.message).to.contain('wrappedKeyMaterial');
      const retry = await d.post('/keys/import', {
        name: 'tok-junk',
        keyType: 'aes256-gcm96',
        importToken: p.body.importToken,
        wrappedKeyMaterial: b64(ssl.oaepEncrypt(p.body.wrappingPublicKeyPem, ssl.rand(32))),
      });
      expect(retry.status).to.equal(400);
      expect(retry.body.message).to.contain('already used');

      const unknown = await d.post('/keys/import', { name: 'tok-unknown', keyType: 'aes256-gcm96', importToken: 'kmsd-import-nope', wrappedKeyMaterial: b64(ssl.rand(384)) });
      expect(unknown.status).to.equal(400);
      expect(unknown.body.message).to.contain('unknown import token');
      const q = await params('aes256-gcm96', 'RSA_OAEP_SHA1');
      const otherOrg = await d.post(
        '/keys/import',
        { name: 'tok-other-org', keyType: 'aes256-gcm96', importToken: q.body.importToken, wrappedKeyMaterial: b64(ssl.oaepEncrypt(q.body.wrappingPublicKeyPem, ssl.rand(32))) },
        { org: 'org-other' },
      );
      expect(otherOrg.status).to.equal(400);
      expect(otherOrg.body.message).to.contain('unknown import token');
    });

    it('a token expires after 24 h on the daemon clock → 400 "expired", and its import pair is destroyed', async () => {
      const p = await params('aes256-gcm96', 'RSA_AES_KEY_WRAP_SHA1');
      const wrapped = b64(ssl.twoPart(p.body.wrappingPublicKeyPem, ssl.rand(32)));
      const pair = importPairOf(p.body.wrappingPublicKeyPem);
      expect(pair, 'the import pair is on the token').to.not.equal(undefined);
      await d.advanceClock(24 * 3600 + 1);
      const r = await d.post('/keys/import', { name: 'tok-expired', keyType: 'aes256-gcm96', importToken: p.body.importToken, wrappedKeyMaterial: wrapped });
      expect(r.status).to.equal(400);
      expect(r.body.code).to.equal('ValidationError');
      expect(r.body.message).to.contain('expired');
      expect(importPairOf(p.body.wrappingPublicKeyPem), 'the import pair is destroyed').to.equal(undefined);
      const again = await d.post('/keys/import', { name: 'tok-expired', keyType: 'aes256-gcm96', importToken: p.body.importToken, wrappedKeyMaterial: wrapped });
      expect(again.status).to.equal(400);
      expect(again.body.message).to.contain('expired');
    });

    it('import-version adds an imported latest version to an imported key with allowRotation; old ciphertexts still decrypt', async () => {
      const p1 = await params('aes256-gcm96', 'RSA_OAEP_SHA1');
      const m1 = ssl.rand(32);
      const k = await d.post('/keys/import', {
        name: 'tok-versions',
        keyType: 'aes256-gcm96',
        allowRotation: true,
        importToken: p1.body.importToken,
        wrappedKeyMaterial: b64(ssl.oaepEncrypt(p1.body.wrappingPublicKeyPem, m1)),
      });
      expect(k.status).to.equal(201);
      const old = await d.post(`/keys/${k.body.identity}/encrypt`, { plaintext: b64('v1 data') });

      const p2 = await params('aes256-gcm96', 'RSA_AES_KEY_WRAP_SHA1', stack.token('keyadmin'));
      const m2 = ssl.rand(32);
      const v = await d.post(
        `/keys/${k.body.identity}/import-version`,
        { importToken: p2.body.importToken, wrappedKeyMaterial: b64(ssl.twoPart(p2.body.wrappingPublicKeyPem, m2)) },
        { token: stack.token('keyadmin') },
      );
      expect(v.status, JSON.stringify(v.body)).to.equal(200);
      expect(v.body.latestVersion).to.equal(2);
      expect(v.body.versions.map((x: { version: number }) => x.version)).to.deep.equal([1, 2]);
      const fresh = await d.post(`/keys/${k.body.identity}/encrypt`, { plaintext: b64('v2 data') });
      expect(fresh.body.keyVersion).to.equal('2');
      expect(decryptOffline(m2, fresh.body.ciphertext, Buffer.alloc(0)).toString()).to.equal('v2 data');
      const dec = await d.post(`/keys/${k.body.identity}/decrypt`, { ciphertext: old.body.ciphertext });
      expect(unb64(dec.body.plaintext).toString()).to.equal('v1 data');

      const p3 = await params('aes256-gcm96', 'RSA_OAEP_SHA1');
      const denied = await d.post(
        `/keys/${k.body.identity}/import-version`,
        { importToken: p3.body.importToken, wrappedKeyMaterial: b64(ssl.oaepEncrypt(p3.body.wrappingPublicKeyPem, ssl.rand(32))) },
        { token: stack.token('crypto') },
      );
      expect(denied.status).to.equal(403);
    });

    it('import-version is refused (409 KeyStateConflict) for keys imported without allowRotation and for generated keys', async () => {
      const p1 = await params('aes256-gcm96', 'RSA_OAEP_SHA1');
      const k = await d.post('/keys/import', {
        name: 'tok-noversions',
        keyType: 'aes256-gcm96',
        importToken: p1.body.importToken,
        wrappedKeyMaterial: b64(ssl.oaepEncrypt(p1.body.wrappingPublicKeyPem, ssl.rand(32))),
      });
      const generated = await d.createKey('generated-for-import', 'aes256-gcm96');
      for (const id of [k.body.identity, generated.identity]) {
        const p = await params('aes256-gcm96', 'RSA_OAEP_SHA1');
        const r = await d.post(`/keys/${id}/import-version`, {
          importToken: p.body.importToken,
          wrappedKeyMaterial: b64(ssl.oaepEncrypt(p.body.wrappingPublicKeyPem, ssl.rand(32))),
        });
        expect(r.status).to.equal(409);
        expect(r.body.code).to.equal('KeyStateConflict');
      }
    });
  });

  describe('two daemons on one data dir and token, and the scheduler', () => {
    let stack2: TestStack;
    let a: Daemon;
    let b: Daemon;
    before(async () => {
      stack2 = await TestStack.create({ name: 'byok-race', mongodbUri: ownMongoUri('byok-race'), config: { rotation: { evaluationIntervalSeconds: 1, maxManualRotations: 10 } } });
      [a, b] = await Promise.all([stack2.start(), stack2.start()]);
    });
    after(() => stack2?.cleanup());

    it('racing first uses of the wrapping key on two daemons agree on one pair, generated once (reservation in SQLite)', async () => {
      const replies = await Promise.all([a.get('/wrapping-key'), b.get('/wrapping-key'), a.get('/wrapping-key'), b.get('/wrapping-key')]);
      for (const r of replies) expect(r.status, JSON.stringify(r.body)).to.equal(200);
      expect(new Set(replies.map((r) => r.body.publicKey)).size).to.equal(1);
      const pairs = inspectToken(stack2, TOKEN_LABEL).filter((o) => o.id.startsWith('kmsd/w/') && o.cls === 'private');
      expect(pairs).to.have.length(1);
      // Both daemons can unwrap with it.
      for (const [i, dd] of [a, b].entries()) {
        const r = await dd.post('/keys', { name: `race-${i}`, keyType: 'aes256-gcm96', importKeyMaterial: b64(ssl.twoPart(replies[0]!.body.publicKey, ssl.rand(32))) });
        expect(r.status, JSON.stringify(r.body)).to.equal(201);
      }
    });

    it('an import token issued by one daemon imports on the other (the pair lives in the shared token, the token hash in the shared SQLite)', async () => {
      const p = await a.post('/keys/import-parameters', { keyType: 'hmac-sha512', wrappingAlgorithm: 'RSA_AES_KEY_WRAP_SHA1' });
      const material = ssl.rand(64);
      const r = await b.post('/keys/import', {
        name: 'cross-daemon',
        keyType: 'hmac-sha512',
        importToken: p.body.importToken,
        wrappedKeyMaterial: b64(ssl.twoPart(p.body.wrappingPublicKeyPem, material)),
      });
      expect(r.status, JSON.stringify(r.body)).to.equal(201);
      const h = await a.post(`/keys/${r.body.identity}/hmac`, { input: b64('both daemons') });
      expect(versionedPayload(h.body.hmac).data.equals(createHmac('sha512', material).update('both daemons').digest())).to.equal(true);
    });

    it('the scheduled sweep destroys the import pair of a token that expired without being presented', async () => {
      const p = await a.post('/keys/import-parameters', { keyType: 'aes256-gcm96', wrappingAlgorithm: 'RSA_OAEP_SHA1' });
      expect(p.status).to.equal(200);
      const n = Buffer.from(createPublicKey(p.body.wrappingPublicKeyPem).export({ format: 'jwk' }).n!, 'base64url').toString('hex');
      const pairThere = () =>
        sourceToken<{ id: string; modulus: string }[]>(stack2, TOKEN_LABEL, { op: 'rsa-private-keys', idPrefix: 'kmsd/i/' }).some((o) => o.modulus === n);
      expect(pairThere()).to.equal(true);
      await a.advanceClock(24 * 3600 + 1);
      await waitFor('the sweep to destroy the expired import pair', async () => !pairThere(), 60_000, 500);
      const r = await a.post('/keys/import', {
        name: 'late',
        keyType: 'aes256-gcm96',
        importToken: p.body.importToken,
        wrappedKeyMaterial: b64(ssl.oaepEncrypt(p.body.wrappingPublicKeyPem, ssl.rand(32))),
      });
      expect(r.status).to.equal(400);
      expect(r.body.message).to.contain('expired');
    });
  });
});
