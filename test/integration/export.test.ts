import { expect } from 'chai';
import { createDecipheriv, createPrivateKey } from 'node:crypto';
import { b64, OpenSsl, unb64, versionedPayload } from '../helpers/byok.js';
import { TestStack, type Daemon } from '../helpers/stack.js';
import { ownMongoUri } from './keys-token.js';

describe('break-glass export', function () {
  this.timeout(180_000);
  let stack: TestStack;
  let d: Daemon;
  let ssl: OpenSsl;
  let wrappingPem: string;
  let caller: { privatePem: string; publicPem: string };

  const importKey = async (name: string, keyType: string, material: Buffer, extra: Record<string, unknown> = {}) => {
    const r = await d.post('/keys', { name, keyType, importKeyMaterial: b64(ssl.twoPart(wrappingPem, material)), ...extra });
    if (r.status !== 201) throw new Error(`import ${name}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  };

  before(async () => {
    stack = await TestStack.create({
      name: 'export', mongodbUri: ownMongoUri('export'),
      principals: [
        { name: 'admin', roles: ['admin'] },
        { name: 'keyadmin', roles: ['key-admin'] },
        { name: 'crypto', roles: ['crypto-user'] },
        { name: 'auditor', roles: ['auditor'] },
      ],
    });
    d = await stack.start();
    ssl = new OpenSsl();
    wrappingPem = (await d.get('/wrapping-key')).body.publicKey;
    caller = ssl.rsaPair(2048);
  });
  after(async () => {
    ssl?.cleanup();
    await stack?.cleanup();
  });

  it('exports an imported AES key under the caller’s RSA key (made in the token); OpenSSL unwraps it to the imported material', async () => {
    const material = ssl.rand(32);
    const key = await importKey('exp-aes', 'aes256-gcm96', material, { exportAllowed: true });
    expect(key.exportAllowed).to.equal(true);
    const r = await d.post(`/keys/${key.identity}/export`, { wrappingPublicKeyPem: caller.publicPem });
    expect(r.status, JSON.stringify(r.body)).to.equal(200);
    expect(r.body).to.include({ keyVersion: '1', wrappingAlgorithm: 'RSA_AES_KEY_WRAP_SHA1' });
    const blob = unb64(r.body.keyMaterial);
    expect(ssl.unwrapTwoPart(caller.privatePem, blob, 256).equals(material)).to.equal(true);
  });

  it('exports an imported ECDSA P-384 key as PKCS#8: the same private key as imported', async () => {
    const k = ssl.genpkey('ec-P-384');
    const key = await importKey('exp-ec', 'ecdsa-p384', k.der, { exportAllowed: true });
    const r = await d.post(`/keys/${key.identity}/export`, { wrappingPublicKeyPem: caller.publicPem, keyVersion: '1' });
    expect(r.status, JSON.stringify(r.body)).to.equal(200);
    const der = ssl.unwrapTwoPart(caller.privatePem, unb64(r.body.keyMaterial), 256);
    const exported = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }).export({ format: 'jwk' });
    expect(exported.d).to.equal(k.key.export({ format: 'jwk' }).d);
  });

  it('exports a generated exportAllowed key: a ciphertext kmsd made decrypts offline with the exported material', async () => {
    const key = await d.createKey('exp-generated', 'aes256-gcm96', { exportAllowed: true });
    const e = await d.post(`/keys/${key.identity}/encrypt`, { plaintext: b64('escrowed') });
    const r = await d.post(`/keys/${key.identity}/export`, { wrappingPublicKeyPem: caller.publicPem });
    expect(r.status).to.equal(200);
    const material = ssl.unwrapTwoPart(caller.privatePem, unb64(r.body.keyMaterial), 256);
    const { data } = versionedPayload(e.body.ciphertext);
    const dec = createDecipheriv('aes-256-gcm', material, data.subarray(0, 12));
    dec.setAAD(Buffer.alloc(0));
    dec.setAuthTag(data.subarray(data.length - 16));
    expect(Buffer.concat([dec.update(data.subarray(12, data.length - 16)), dec.final()]).toString()).to.equal('escrowed');
  });

  it('refuses keys without exportAllowed (403) and non-admins (403), audited as kms.export denied', async () => {
    const locked = await d.createKey('exp-locked', 'aes256-gcm96');
    const a = await d.post(`/keys/${locked.identity}/export`, { wrappingPublicKeyPem: caller.publicPem }, { headers: { 'x-request-id': 'exp-locked-1' } });
    expect(a.status).to.equal(403);
    expect(a.body.code).to.equal('Forbidden');
    expect(a.body.message).to.contain('exportAllowed');
    const open = await d.createKey('exp-open', 'aes256-gcm96', { exportAllowed: true });
    for (const who of ['keyadmin', 'crypto', 'auditor']) {
      const r = await d.post(`/keys/${open.identity}/export`, { wrappingPublicKeyPem: caller.publicPem }, { token: stack.token(who) });
      expect(r.status, who).to.equal(403);
      expect(r.body.code, who).to.equal('Forbidden');
    }
    const audit = await d.get(`/audit?action=kms.export&keyIdentity=${open.identity}`);
    expect(audit.body.events.map((e: { principal: string; outcome: string }) => `${e.principal}:${e.outcome}`)).to.deep.equal([
      'keyadmin:denied',
      'crypto:denied',
      'auditor:denied',
    ]);
    const lockedEvents = (await d.get(`/audit?action=kms.export&keyIdentity=${locked.identity}`)).body.events;
    expect(lockedEvents).to.have.length(1);
    expect(lockedEvents[0]).to.include({ requestId: 'exp-locked-1', outcome: 'denied', principal: 'admin' });
  });

  it('without wrappingPublicKeyPem and with export.allowPlaintext off → 400 ValidationError naming wrappingPublicKeyPem', async () => {
    const key = await d.createKey('exp-noplain', 'aes256-gcm96', { exportAllowed: true });
    for (const body of [undefined, {}, { keyVersion: '1' }]) {
      const r = await d.post(`/keys/${key.identity}/export`, body);
      expect(r.status).to.equal(400);
      expect(r.body.code).to.equal('ValidationError');
      expect(r.body.message).to.contain('wrappingPublicKeyPem');
    }
  });

  it('rejects unusable wrapping keys and options with clear 4xx: not PEM, too small, not RSA, a private key, SHA256, unknown version, disabled key', async () => {
    const key = await d.createKey('exp-bad', 'aes256-gcm96', { exportAllowed: true });
    const small = ssl.rsaPair(1024);
    const ec = ssl.genpkey('ec-P-256').publicKey.export({ type: 'spki', format: 'pem' }) as string;
    const cases: [Record<string, unknown>, number, string, string][] = [
      [{ wrappingPublicKeyPem: 'not a pem' }, 400, 'ValidationError', 'not a PEM public key'],
      [{ wrappingPublicKeyPem: small.publicPem }, 400, 'ValidationError', 'at least 2048 bits'],
      [{ wrappingPublicKeyPem: ec }, 400, 'ValidationError', 'must be an RSA key'],
      [{ wrappingPublicKeyPem: caller.privatePem }, 400, 'ValidationError', 'must be a public key'],
      [{ wrappingPublicKeyPem: caller.publicPem, hashFunction: 'SHA256' }, 400, 'UnsupportedOperation', 'SHA1'],
      [{ wrappingPublicKeyPem: caller.publicPem, keyVersion: '7' }, 400, 'ValidationError', 'no version 7'],
      [{ wrappingPublicKeyPem: caller.publicPem, format: 'raw' }, 400, 'ValidationError', 'unknown field'],
    ];
    for (const [body, status, code, message] of cases) {
      const r = await d.post(`/keys/${key.identity}/export`, body);
      expect(r.status, JSON.stringify(body)).to.equal(status);
      expect(r.body.code, JSON.stringify(body)).to.equal(code);
      expect(r.body.message, JSON.stringify(body)).to.contain(message);
    }
    await d.post(`/keys/${key.identity}/disable`);
    const disabled = await d.post(`/keys/${key.identity}/export`, { wrappingPublicKeyPem: caller.publicPem });
    expect(disabled.status).to.equal(409);
    expect(disabled.body.code).to.equal('KeyStateConflict');
  });

  it('the export of a successful call is audited kms.export with the caller, version and algorithm, never the material', async () => {
    const material = ssl.rand(32);
    const key = await importKey('exp-audited', 'aes256-gcm96', material, { exportAllowed: true });
    const r = await d.post(`/keys/${key.identity}/export`, { wrappingPublicKeyPem: caller.publicPem }, { headers: { 'x-request-id': 'exp-audit-1' } });
    expect(r.status).to.equal(200);
    const ev = (await d.get(`/audit?action=kms.export&keyIdentity=${key.identity}`)).body.events;
    expect(ev).to.have.length(1);
    expect(ev[0]).to.include({ outcome: 'success', principal: 'admin', keyVersion: '1', requestId: 'exp-audit-1', organisationIdentity: 'org-test' });
    expect(ev[0].detail).to.deep.equal({ wrappingAlgorithm: 'RSA_AES_KEY_WRAP_SHA1' });
    const text = JSON.stringify(ev);
    expect(text).not.to.contain(r.body.keyMaterial.slice(0, 40));
    expect(text).not.to.contain(b64(material));
  });

  describe('with export.allowPlaintext: true', () => {
    let plain: Daemon;
    before(async () => {
      plain = await stack.start({ export: { allowPlaintext: true } });
    });
    after(() => plain?.stop());

    it('returns the plaintext material (wrappingAlgorithm NONE) of AES and PKCS#8 keys; still only for exportAllowed keys', async () => {
      const material = ssl.rand(32);
      const aes = await importKey('exp-plain-aes', 'aes256-gcm96', material, { exportAllowed: true });
      const r = await plain.post(`/keys/${aes.identity}/export`, {});
      expect(r.status, JSON.stringify(r.body)).to.equal(200);
      expect(r.body.wrappingAlgorithm).to.equal('NONE');
      expect(unb64(r.body.keyMaterial).equals(material)).to.equal(true);

      const k = ssl.genpkey('rsa-2048');
      const rsa = await importKey('exp-plain-rsa', 'rsa-2048', k.der, { exportAllowed: true });
      const pr = await plain.post(`/keys/${rsa.identity}/export`);
      expect(pr.status).to.equal(200);
      const exported = createPrivateKey({ key: unb64(pr.body.keyMaterial), format: 'der', type: 'pkcs8' }).export({ format: 'jwk' });
      expect(exported.d).to.equal(k.key.export({ format: 'jwk' }).d);

      const locked = await importKey('exp-plain-locked', 'aes256-gcm96', ssl.rand(32));
      const denied = await plain.post(`/keys/${locked.identity}/export`);
      expect(denied.status).to.equal(403);
      // The wrapped form stays available on the same daemon.
      const wrapped = await plain.post(`/keys/${aes.identity}/export`, { wrappingPublicKeyPem: caller.publicPem });
      expect(ssl.unwrapTwoPart(caller.privatePem, unb64(wrapped.body.keyMaterial), 256).equals(material)).to.equal(true);
    });
  });
});
