import { expect } from 'chai';
import { padToken } from '../helpers/token-pad.js';
import { TestStack, waitFor, type Daemon } from '../helpers/stack.js';

const PAD_OBJECTS = 15_000;

/** kmsd_token_index_complete{region="nl-01"} from /metrics (undefined when the daemon has no such metric). */
async function indexComplete(d: Daemon): Promise<number | undefined> {
  const text = await (await fetch(`${d.url}/metrics`)).text();
  const m = /^kmsd_token_index_complete\{region="nl-01"[^}]*\} (\d+)$/m.exec(text);
  return m ? Number(m[1]) : undefined;
}

/**
 * Cold start on a large token: the daemon serves while it builds the token's object index in
 * the background (SoftHSM2 at 15,000 objects: seconds of search and CKA_ID reads). A request
 * for a key not indexed yet waits for the index; nothing is refused.
 */
describe('cold start on a large token: requests while the object index is built succeed', function () {
  this.timeout(300_000);
  let stack: TestStack;
  before(async () => {
    stack = await TestStack.create({ name: 'cold-start' });
  });
  after(() => stack.cleanup());

  it('encrypt and decrypt sent before the index is complete answer 200 with the right plaintext; /readyz shows the region available', async () => {
    const first = await stack.start();
    const keys: string[] = [];
    for (let i = 0; i < 4; i++) keys.push((await first.createKey(`cold-${i}`, 'aes256-gcm96')).identity);
    const sealed: { id: string; ciphertext: string }[] = [];
    for (const id of keys) {
      const e = await first.post(`/keys/${id}/encrypt`, { plaintext: Buffer.from(`secret ${id}`).toString('base64') });
      expect(e.status, JSON.stringify(e.body)).to.equal(200);
      sealed.push({ id, ciphertext: e.body.ciphertext });
    }
    await first.stop();
    padToken(stack, 'kmsd-nl-01', PAD_OBJECTS);

    const d = await stack.start();
    // The daemon announced itself ready; its index is still being built.
    expect(await indexComplete(d), 'the index is still being built when the daemon starts serving').to.equal(0);
    const ready = await d.call('GET', '/readyz', undefined, { token: null, org: null });
    const building = await indexComplete(d);
    const [enc, ...decs] = await Promise.all([
      d.post(`/keys/${keys[0]}/encrypt`, { plaintext: Buffer.from('during the build').toString('base64') }),
      ...sealed.map((s) => d.post(`/keys/${s.id}/decrypt`, { ciphertext: s.ciphertext })),
    ]);
    expect(building, 'the requests below were sent while the index was being built').to.equal(0);
    expect(ready.body.checks.regions['nl-01'], 'the region counts as available while its index is built').to.deep.equal({ available: true });
    expect(enc.status, JSON.stringify(enc.body)).to.equal(200);
    expect(decs.map((r) => r.status)).to.deep.equal(sealed.map(() => 200));
    expect(decs.map((r) => Buffer.from(r.body.plaintext, 'base64').toString())).to.deep.equal(keys.map((id) => `secret ${id}`));

    // ... and the index completes: every key still works, the new ciphertext decrypts.
    await waitFor('index complete', async () => (await indexComplete(d)) === 1, 120_000);
    const back = await d.post(`/keys/${keys[0]}/decrypt`, { ciphertext: enc.body.ciphertext });
    expect(back.status).to.equal(200);
    expect(Buffer.from(back.body.plaintext, 'base64').toString()).to.equal('during the build');
  });
});
