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
          expect([200, 503]).to.include(r.status); // 503 RegionUnavailable (retryable) while the index is re-read
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
});
