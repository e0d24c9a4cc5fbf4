import { expect } from 'chai';
import { TestStack, waitFor, type Daemon } from '../helpers/stack.js';

describe('smoke: daemon on a real token', () => {
  let stack: TestStack;
  let d: Daemon;
  before(async () => {
    stack = await TestStack.create({ name: 'smoke' });
    d = await stack.start();
  });
  after(() => stack.cleanup());

  it('is ready with token, SQLite and MongoDB up', async () => {
    const r = await waitFor('ready', async () => {
      const x = await d.call('GET', '/readyz', undefined, { token: null, org: null });
      return x.status === 200 ? x : undefined;
    });
    expect(r.body.checks.mongodb).to.equal(true);
  });

  it('encrypts and decrypts a round trip', async () => {
    await d.createKey('smoke', 'aes256-gcm96');
    const e = await d.post('/keys/smoke/encrypt', { plaintext: Buffer.from('hi').toString('base64') });
    expect(e.status).to.equal(200);
    const p = await d.post('/keys/smoke/decrypt', { ciphertext: e.body.ciphertext });
    expect(Buffer.from(p.body.plaintext, 'base64').toString()).to.equal('hi');
  });
});
