import { expect } from 'chai';
import { b64, OpenSsl } from '../helpers/byok.js';
import { TestStack, type Daemon, type Reply } from '../helpers/stack.js';

/**
 * SoftHSM2 2.6.1 can hide an object another process just created (both processes bump the
 * token's generation counter; the one that wrote second never sees it move). kmsd then
 * re-reads the token's object index; requests must wait for that re-read, not answer 503.
 */
describe('objects another process just created: requests wait for the object index re-read, never 503', function () {
  this.timeout(300_000);
  let stack: TestStack;
  let a: Daemon;
  let b: Daemon;
  before(async () => {
    stack = await TestStack.create({ name: 'visibility' });
    a = await stack.start();
    b = await stack.start();
  });
  after(() => stack.cleanup());

  const tally = (replies: Reply[]) => {
    const by: Record<number, number> = {};
    for (const r of replies) by[r.status] = (by[r.status] ?? 0) + 1;
    return by;
  };

  it('30 keys created on A (B writing in between) are usable on B at once, every key type path', async () => {
    const replies: Reply[] = [];
    const types = ['aes256-gcm96', 'hmac-sha256', 'ed25519', 'ecdsa-p256'];
    for (let i = 0; i < 30; i++) {
      const type = types[i % types.length]!;
      const ka = await a.createKey(`vis-a-${i}`, type);
      // B writes to the token before it uses A's key: the generation skip that hides A's object
      await b.createKey(`vis-b-${i}`, 'aes256-gcm96');
      const use = (d: Daemon) => {
        if (type === 'aes256-gcm96') return d.post(`/keys/${ka.identity}/encrypt`, { plaintext: 'aGk=' });
        if (type === 'hmac-sha256') return d.post(`/keys/${ka.identity}/hmac`, { input: 'aGk=' });
        return d.post(`/keys/${ka.identity}/sign`, { input: 'aGk=' });
      };
      // several at once: the first miss and the requests that arrive during the re-read
      replies.push(...(await Promise.all([use(b), use(b), use(b), use(a)])));
    }
    expect(tally(replies)).to.deep.equal({ 200: replies.length });
  });

  it('after a rotation on A, the first use of the new version on B succeeds (10 rotations)', async () => {
    const k = await a.createKey('vis-rotated', 'aes256-gcm96', {});
    const rk = await a.createKey('vis-rotated-sign', 'ed25519', {});
    const replies: Reply[] = [];
    for (let i = 0; i < 10; i++) {
      const r = await a.post(`/keys/${k.identity}/rotate`);
      expect(r.status, JSON.stringify(r.body)).to.equal(200);
      const rs = await a.post(`/keys/${rk.identity}/rotate`);
      expect(rs.status, JSON.stringify(rs.body)).to.equal(200);
      await b.createKey(`vis-rot-b-${i}`, 'aes256-gcm96');
      const e = await Promise.all([b.post(`/keys/${k.identity}/encrypt`, { plaintext: 'aGk=' }), b.post(`/keys/${rk.identity}/sign`, { input: 'aGk=' })]);
      replies.push(...e);
      if (e[0].status === 200) expect(e[0].body.keyVersion).to.equal(String(i + 2));
      if (e[1].status === 200) expect(e[1].body.keyVersion).to.equal(String(i + 2));
    }
    expect(tally(replies)).to.deep.equal({ 200: replies.length });
  });

  it('an import token is not used up by a re-read that happens during its import: every import answers 201', async () => {
    // Each round: B misses a key A just made (its re-read drains the region at once) a few
    // milliseconds after an import on B started, i.e. while that import is between using its
    // token up and unwrapping. The import waits for the re-read and runs again; that second run
    // must find its token unused and its import pair still on the token.
    const ssl = new OpenSsl();
    try {
      const rounds = 12;
      const imports: { importToken: string; wrapped: string }[] = [];
      for (let i = 0; i < rounds; i++) {
        const p = await b.post('/keys/import-parameters', { keyType: 'aes256-gcm96', wrappingAlgorithm: 'RSA_OAEP_SHA1' });
        expect(p.status, JSON.stringify(p.body)).to.equal(200);
        imports.push({ importToken: p.body.importToken, wrapped: b64(ssl.oaepEncrypt(p.body.wrappingPublicKeyPem, ssl.rand(32))) });
      }
      const reinits = () => b.logs.split('re-initialised the PKCS#11 library').length - 1;
      const before = reinits();
      const replies: Reply[] = [];
      for (let i = 0; i < rounds; i++) {
        const ka = await a.createKey(`vis-imp-a-${i}`, 'aes256-gcm96');
        await b.createKey(`vis-imp-b-${i}`, 'aes256-gcm96');
        await new Promise((r) => setTimeout(r, 250)); // past the re-read spacing: B's re-read starts at its miss
        const imported = b.post('/keys/import', { name: `vis-imported-${i}`, keyType: 'aes256-gcm96', importToken: imports[i]!.importToken, wrappedKeyMaterial: imports[i]!.wrapped });
        await new Promise((r) => setTimeout(r, (i % 6) * 0.8));
        const used = b.post(`/keys/${ka.identity}/encrypt`, { plaintext: 'aGk=' });
        replies.push(...(await Promise.all([imported, used])));
      }
      expect(reinits() - before, 'B re-read its object index in the rounds').to.be.at.least(1);
      expect(replies.filter((r) => r.status !== 200 && r.status !== 201).map((r) => JSON.stringify(r.body))).to.deep.equal([]);
    } finally {
      ssl.cleanup();
    }
  });

  it('a create flood by one organisation through both daemons: the other organisation never sees a 503', async () => {
    const other = { org: 'org-other' };
    const mine = await a.createKey('vis-steady', 'aes256-gcm96', {}, other);
    const steadyHmac = await b.createKey('vis-steady-hmac', 'hmac-sha256', {}, other);
    let flooding = true;
    const floodReplies: Reply[] = [];
    const flood = async (d: Daemon, lane: number) => {
      for (let i = 0; i < 15; i++) floodReplies.push(await d.post('/keys', { name: `flood-${lane}-${i}`, keyType: 'aes256-gcm96' }));
    };
    const steady: Reply[] = [];
    const encryptLoop = async (d: Daemon) => {
      while (flooding) {
        steady.push(await d.post(`/keys/${mine.identity}/encrypt`, { plaintext: 'aGk=' }, other));
        steady.push(await d.post(`/keys/${steadyHmac.identity}/hmac`, { input: 'aGk=' }, other));
      }
    };
    const loops = [encryptLoop(a), encryptLoop(b), encryptLoop(b)];
    // the flooding organisation also uses its new keys on the other daemon right away
    const floodAndUse = async (from: Daemon, to: Daemon, lane: number) => {
      await flood(from, lane);
      for (const r of floodReplies.filter((x) => x.status === 201 && x.body.name.startsWith(`flood-${lane}-`)))
        floodReplies.push(await to.post(`/keys/${r.body.identity}/encrypt`, { plaintext: 'aGk=' }));
    };
    await Promise.all([floodAndUse(a, b, 1), floodAndUse(b, a, 2), floodAndUse(a, b, 3)]);
    flooding = false;
    await Promise.all(loops);
    expect(steady.length).to.be.greaterThan(10);
    expect(tally(steady)).to.deep.equal({ 200: steady.length });
    expect(Object.keys(tally(floodReplies)).sort()).to.deep.equal(['200', '201']);
    expect(a.alive && b.alive).to.equal(true);
  });
});
