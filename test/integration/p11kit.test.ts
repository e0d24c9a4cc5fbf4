import { expect } from 'chai';
import { P11KitServer, p11kitClientModule } from '../helpers/p11kit.js';
import { TestStack, waitFor, type Daemon } from '../helpers/stack.js';

/**
 * A region whose token is reached through p11-kit-client.so and a `p11-kit server` process (a
 * real network hop): it offers what its mechanism list says, answers 503 while the server is
 * gone and recovers by itself when it is back. The SoftHSM2 region next to it is unaffected.
 */
describe('a network token (p11-kit server over a Unix socket)', function () {
  this.timeout(180_000);
  const region = { region: 'p11-01' };
  let stack: TestStack;
  let server: P11KitServer;
  let d: Daemon;
  before(async () => {
    stack = await TestStack.create({ name: 'p11kit', tokens: ['kmsd-nl-01', 'kmsd-p11'] });
    server = new P11KitServer(stack, 'kmsd-p11');
    stack.opts.env = { P11_KIT_SERVER_ADDRESS: server.address };
    (stack.config.regions as unknown[]).push({ name: 'p11-01', pkcs11Module: p11kitClientModule(), tokenLabel: 'kmsd-p11', pinEnv: 'KMSD_TEST_PIN' });
    await server.start();
    d = await stack.start();
  });
  after(async () => {
    await stack.cleanup();
    await server.kill();
  });

  it('ECDSA P-256 and HMAC keys work through it: sign, verify, hmac (also many signatures at once)', async () => {
    const ec = await d.createKey('p11-ec', 'ecdsa-p256', {}, region);
    const mac = await d.createKey('p11-mac', 'hmac-sha256', {}, region);
    const sigs = await Promise.all(Array.from({ length: 12 }, () => d.post(`/keys/${ec.identity}/sign`, { input: 'aGk=' }, region)));
    expect(sigs.map((s) => s.status)).to.deep.equal(sigs.map(() => 200));
    const v = await d.post(`/keys/${ec.identity}/verify`, { input: 'aGk=', signature: sigs[0]!.body.signature }, region);
    expect(v.body.valid).to.equal(true);
    const bad = await d.post(`/keys/${ec.identity}/verify`, { input: 'aGkh', signature: sigs[0]!.body.signature }, region);
    expect(bad.body.valid).to.equal(false);
    const h = await d.post(`/keys/${mac.identity}/hmac`, { input: 'aGk=' }, region);
    expect(h.status).to.equal(200);
    const hv = await d.post(`/keys/${mac.identity}/verify-hmac`, { input: 'aGk=', hmac: h.body.hmac }, region);
    expect(hv.body.valid).to.equal(true);
  });

  it('key types whose mechanisms the token does not offer are 400 UnsupportedOperation naming the mechanism', async () => {
    const r = await d.post('/keys', { name: 'p11-aes', keyType: 'aes256-gcm96' }, region);
    expect(r.status).to.equal(400);
    expect(r.body.code).to.equal('UnsupportedOperation');
    expect(r.body.message).to.contain('CKM_AES_GCM');
    const ed = await d.post('/keys', { name: 'p11-ed', keyType: 'ed25519' }, region);
    expect(ed.status).to.equal(400);
    expect(ed.body.message).to.contain('CKM_EDDSA');
    // the same key type in the SoftHSM2 region is fine
    await d.createKey('local-aes', 'aes256-gcm96');
  });

  it('server killed: that region answers 503 RegionUnavailable, the other serves; restarted: it recovers by itself', async () => {
    const ec = await d.createKey('p11-ec-2', 'ecdsa-p256', {}, region);
    const mac = await d.createKey('p11-mac-2', 'hmac-sha256', {}, region);
    const local = await d.createKey('local-aes-2', 'aes256-gcm96');
    const before = await d.post(`/keys/${ec.identity}/sign`, { input: 'aGk=' }, region);
    expect(before.status).to.equal(200);
    await server.kill();
    const down = [
      await d.post(`/keys/${ec.identity}/sign`, { input: 'aGk=' }, region),
      await d.post(`/keys/${mac.identity}/hmac`, { input: 'aGk=' }, region),
      await d.post(`/keys/${ec.identity}/sign`, { input: 'aGk=' }, region),
    ];
    expect(down.map((r) => r.status)).to.deep.equal([503, 503, 503]);
    expect(down.map((r) => r.body.code)).to.deep.equal(['RegionUnavailable', 'RegionUnavailable', 'RegionUnavailable']);
    expect((await d.post(`/keys/${local.identity}/encrypt`, { plaintext: 'aGk=' })).status).to.equal(200);
    await server.start();
    await waitFor('the p11-kit region signs again', async () => {
      const r = await d.post(`/keys/${ec.identity}/sign`, { input: 'aGk=' }, region);
      expect([200, 503]).to.include(r.status);
      return r.status === 200;
    }, 30_000, 250);
    const v = await d.post(`/keys/${ec.identity}/verify`, { input: 'aGk=', signature: before.body.signature }, region);
    expect(v.body.valid).to.equal(true);
    expect((await d.post(`/keys/${mac.identity}/hmac`, { input: 'aGk=' }, region)).status).to.equal(200);
    expect(d.alive).to.equal(true);
  });
});
