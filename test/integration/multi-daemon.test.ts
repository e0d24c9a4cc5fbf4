import { expect } from 'chai';
import { TestStack, waitFor } from '../helpers/stack.js';

describe('two daemons on one token: objects created by the other become visible', function () {
  this.timeout(120_000);
  let stack: TestStack;
  after(() => stack.cleanup());

  it('a key created on A is usable on B even after B wrote to the token in between (SoftHSM2 generation skip)', async () => {
    stack = await TestStack.create({ name: 'multi-visibility' });
    const a = await stack.start();
    const b = await stack.start();
    for (let round = 0; round < 3; round++) {
      // A writes an object; then B writes one before it ever re-reads the token directory. SoftHSM2
      // bumps the shared generation counter twice and B never sees it move: without kmsd's
      // object-index refresh, B could never find A's object.
      const ka = await a.createKey(`from-a-${round}`, 'aes256-gcm96');
      await b.createKey(`from-b-${round}`, 'aes256-gcm96');
      const enc = await waitFor(
        'encrypt on B with A\'s key',
        async () => {
          const r = await b.post(`/keys/${ka.identity}/encrypt`, { plaintext: 'aGk=' });
          expect(r.status, JSON.stringify(r.body)).to.equal(200); // requests wait for the index re-read, never 503
          return r.status === 200 ? r : undefined;
        },
        20_000,
        100,
      );
      const dec = await a.post(`/keys/${ka.identity}/decrypt`, { ciphertext: enc.body.ciphertext });
      expect(dec.body.plaintext).to.equal('aGk=');
    }
    expect(a.alive && b.alive).to.equal(true);
  });

  it('signing threads reopen their sessions after the library is re-initialised', async () => {
    const a = stack.daemons[0]!;
    const b = stack.daemons[1]!;
    const ed = await b.createKey('signer-threads', 'ed25519');
    const sign = async () => {
      const r = await b.post(`/keys/${ed.identity}/sign`, { input: 'c2lnbiBtZQ==' });
      expect(r.status, JSON.stringify(r.body)).to.equal(200);
      const v = await a.post(`/keys/${ed.identity}/verify`, { input: 'c2lnbiBtZQ==', signature: r.body.signature });
      expect(v.body.valid).to.equal(true);
    };
    await Promise.all([sign(), sign(), sign(), sign()]); // both threads have a session now
    const reinits = () => b.logs.split('re-initialised the PKCS#11 library').length - 1;
    const before = reinits();
    // force B to re-read the token (the generation skip of the test above): its library is re-initialised
    const ka = await a.createKey('reinit-trigger', 'aes256-gcm96');
    await b.createKey('reinit-trigger-b', 'aes256-gcm96');
    await waitFor('B sees A\u2019s key', async () => (await b.post(`/keys/${ka.identity}/encrypt`, { plaintext: 'aGk=' })).status === 200, 20_000, 100);
    await waitFor('B signs again', async () => {
      const r = await b.post(`/keys/${ed.identity}/sign`, { input: 'c2lnbiBtZQ==' });
      expect(r.status, JSON.stringify(r.body)).to.equal(200);
      return r.status === 200;
    }, 20_000, 100);
    await Promise.all([sign(), sign(), sign(), sign()]);
    expect(reinits()).to.be.greaterThan(before);
  });
});

describe('two kmsd installations sharing one token never touch each other’s objects', function () {
  this.timeout(120_000);
  let stack: TestStack;
  after(() => stack.cleanup());

  it('reconciliation of installation B leaves installation A’s keys alone', async () => {
    stack = await TestStack.create({ name: 'two-installations' });
    const a = await stack.start();
    const k = await a.createKey('owned-by-a', 'aes256-gcm96');
    const e = await a.post(`/keys/${k.identity}/encrypt`, { plaintext: 'aGk=' });
    await a.stop();
    // B: same token, its own data dir (so it knows none of A's versions); its start-up
    // reconciliation must not take A's objects for orphans, although A's process is gone.
    const b = await stack.start({ dataDir: `${stack.dir}/data-b` });
    await b.createKey('owned-by-b', 'aes256-gcm96');
    await b.stop();
    const a2 = await stack.start();
    const d = await a2.post(`/keys/${k.identity}/decrypt`, { ciphertext: e.body.ciphertext });
    expect(d.status).to.equal(200);
    expect(d.body.plaintext).to.equal('aGk=');
  });
});
