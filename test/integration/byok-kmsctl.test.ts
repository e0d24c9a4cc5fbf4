import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { createPublicKey, randomBytes, verify } from 'node:crypto';
import { rawToDer } from '../../src/crypto/ecdsa-signature.js';
import { b64, unb64 } from '../helpers/byok.js';
import { sourceToken } from '../helpers/byok-source.js';
import { KMSCTL_BIN, SOFTHSM_LIB } from '../helpers/paths.js';
import { ORG, TestStack, type Daemon } from '../helpers/stack.js';
import { ownMongoUri } from './keys-token.js';

const SOURCE = 'byok-source';
const P256_OID = '06082a8648ce3d030107';

describe('kmsctl byok: import from another PKCS#11 token (the existing-HSM case)', function () {
  this.timeout(180_000);
  let stack: TestStack;
  let d: Daemon;

  before(async () => {
    stack = await TestStack.create({ name: 'byok-kmsctl', mongodbUri: ownMongoUri('byok-kmsctl'), principals: [{ name: 'admin', roles: ['admin'] }, { name: 'crypto', roles: ['crypto-user'] }] });
    stack.initToken(SOURCE); // the customer's HSM: a second SoftHSM2 token in the same conf
    d = await stack.start();
  });
  after(() => stack?.cleanup());

  const kmsctlByok = (args: string[], apiToken = stack.token('admin')) =>
    spawnSync(
      process.execPath,
      [KMSCTL_BIN, 'byok', '--url', d.url, '--region', 'nl-01', '--org', ORG, '--module', SOFTHSM_LIB, '--token-label', SOURCE, ...args],
      { env: { ...stack.env, KMSD_TOKEN: apiToken, KMSD_SOURCE_PIN: '1234' }, encoding: 'utf8' },
    );

  it('imports an AES-256 key wrapped inside the source token; a ciphertext made in the source token decrypts through kmsd', async () => {
    sourceToken(stack, SOURCE, { op: 'aes', label: 'payments-dek', id: 'src-aes-1', extractable: true });
    const iv = randomBytes(12);
    const aad = Buffer.from('invoice-42');
    const { ciphertext } = sourceToken<{ ciphertext: string }>(stack, SOURCE, {
      op: 'gcm-encrypt',
      label: 'payments-dek',
      iv: b64(iv),
      aad: b64(aad),
      plaintext: b64('made in the old HSM'),
    });

    const r = kmsctlByok(['--key-label', 'payments-dek', '--name', 'payments-dek']);
    expect(r.status, r.stderr).to.equal(0);
    const key = JSON.parse(r.stdout);
    expect(key).to.include({ keyType: 'aes256-gcm96', imported: true, name: 'payments-dek' });

    // The contract's ciphertext format is IV ‖ ciphertext ‖ tag: exactly what the source token produced after its IV.
    const dec = await d.post(`/keys/${key.identity}/decrypt`, { ciphertext: `kms:v1:${b64(Buffer.concat([iv, unb64(ciphertext)]))}`, aad: b64(aad) });
    expect(dec.status, JSON.stringify(dec.body)).to.equal(200);
    expect(unb64(dec.body.plaintext).toString()).to.equal('made in the old HSM');
    const audit = await d.get(`/audit?keyIdentity=${key.identity}&action=kms.create`);
    expect(audit.body.events).to.have.length(1);
    expect(audit.body.events[0]).to.include({ outcome: 'success', principal: 'admin' });
  });

  it('imports an ECDSA P-256 key found by CKA_ID (type inferred): a signature made in the source token verifies through kmsd, and public-key matches', async () => {
    const { ecPoint } = sourceToken<{ ecPoint: string }>(stack, SOURCE, { op: 'ec', label: 'signing', id: 'src-ec-1', curveOid: P256_OID });
    const message = Buffer.from('signed in the old HSM');
    const { signature } = sourceToken<{ signature: string }>(stack, SOURCE, { op: 'ecdsa-sign', label: 'signing', message: b64(message) });

    const r = kmsctlByok(['--key-id', Buffer.from('src-ec-1').toString('hex'), '--name', 'signing-key']);
    expect(r.status, r.stderr).to.equal(0);
    const key = JSON.parse(r.stdout);
    expect(key.keyType).to.equal('ecdsa-p256');

    const pk = await d.get(`/keys/${key.identity}/public-key`);
    const jwk = createPublicKey(pk.body.keys['1']).export({ format: 'jwk' });
    const point = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')]);
    expect(Buffer.from(ecPoint, 'hex').subarray(-65).equals(point)).to.equal(true); // CKA_EC_POINT is DER OCTET STRING ‖ point
    // The source token's raw r‖s signature, checked with node:crypto, then through kmsd (DER).
    const key2 = createPublicKey(pk.body.keys['1']);
    const raw = unb64(signature);
    expect(verify('sha256', message, { key: key2, dsaEncoding: 'ieee-p1363' }, raw)).to.equal(true);
    const derSig = rawToDer(raw);
    const v = await d.post(`/keys/${key.identity}/verify`, { input: b64(message), signature: `kms:v1:${b64(derSig)}` });
    expect(v.body).to.deep.equal({ valid: true });
  });

  it('fails with exit 1 and a clear message, creating nothing, when the source key is not extractable or not found, or the caller lacks the permission', async () => {
    sourceToken(stack, SOURCE, { op: 'aes', label: 'locked', id: 'src-aes-2', extractable: false });
    const before = (await d.get('/keys')).body.length;
    const locked = kmsctlByok(['--key-label', 'locked', '--name', 'locked']);
    expect(locked.status).to.equal(1);
    expect(locked.stderr).to.contain('not extractable');
    const missing = kmsctlByok(['--key-label', 'no-such-key', '--name', 'missing']);
    expect(missing.status).to.equal(1);
    expect(missing.stderr).to.contain('no secret or private key with label no-such-key');
    const denied = kmsctlByok(['--key-label', 'payments-dek', '--name', 'denied'], stack.token('crypto'));
    expect(denied.status).to.equal(1);
    expect(denied.stderr).to.contain('403');
    expect((await d.get('/keys')).body.length).to.equal(before);
  });
});
