import { expect } from 'chai';
import { MongoServer } from '../helpers/mongo.js';
import { sql } from '../helpers/sqlite.js';
import { inspectToken } from '../helpers/token-inspect.js';
import { TestStack, waitFor, type Daemon } from '../helpers/stack.js';

const DAY = 86_400;
const b64 = (s: string) => Buffer.from(s).toString('base64');

async function versionsOf(stack: TestStack, identity: string): Promise<number[]> {
  const rows = await sql<{ version: number }>(stack, 'SELECT version FROM key_versions WHERE key_identity = ? ORDER BY version', [identity]);
  return rows.map((r) => r.version);
}

describe('rotation: manual', function () {
  this.timeout(120_000);
  let stack: TestStack;
  let d: Daemon;
  before(async () => {
    stack = await TestStack.create({
      name: 'rot-manual',
      principals: [
        { name: 'admin', roles: ['admin'] },
        { name: 'crypto', roles: ['crypto-user'] },
      ],
      config: { rotation: { evaluationIntervalSeconds: 3600, maxManualRotations: 6 } },
    });
    d = await stack.start();
  });
  after(() => stack.cleanup());

  it('adds a new token object as the latest version; old ciphertext and signatures still work', async () => {
    const k = await d.createKey('m1', 'aes256-gcm96');
    const before = await d.post('/keys/m1/encrypt', { plaintext: b64('v1 data') });
    const r = await d.post('/keys/m1/rotate');
    expect(r.status).to.equal(200);
    expect(r.body.latestVersion).to.equal(2);
    expect(r.body.versions.map((v: { version: number }) => v.version)).to.deep.equal([1, 2]);
    const after = await d.post('/keys/m1/encrypt', { plaintext: b64('v2 data') });
    expect(after.body.ciphertext).to.match(/^kms:v2:/);
    expect((await d.post('/keys/m1/decrypt', { ciphertext: before.body.ciphertext })).body.plaintext).to.equal(b64('v1 data'));
    const objects = inspectToken(stack, 'kmsd-nl-01').filter((o) => o.id.startsWith(`kmsd/k/${k.identity}/`));
    expect(objects).to.have.length(2);
    const s = await d.createKey('s1', 'ed25519');
    const sig = await d.post(`/keys/${s.identity}/sign`, { input: b64('msg') });
    await d.post(`/keys/${s.identity}/rotate`);
    expect((await d.post(`/keys/${s.identity}/verify`, { input: b64('msg'), signature: sig.body.signature })).body.valid).to.equal(true);
  });

  it('needs the update permission (crypto-user → 403)', async () => {
    const r = await d.post('/keys/m1/rotate', undefined, { token: stack.token('crypto') });
    expect(r.status).to.equal(403);
    expect(r.body.code).to.equal('Forbidden');
  });

  it('concurrent rotations of one key produce contiguous versions, none lost', async () => {
    const k = await d.createKey('c1', 'aes128-gcm96');
    const replies = await Promise.all(Array.from({ length: 5 }, () => d.post(`/keys/${k.identity}/rotate`)));
    expect(replies.map((r) => r.status)).to.deep.equal([200, 200, 200, 200, 200]);
    expect(replies.map((r) => r.body.latestVersion).sort()).to.deep.equal([2, 3, 4, 5, 6]);
    expect(await versionsOf(stack, k.identity)).to.deep.equal([1, 2, 3, 4, 5, 6]);
  });

  it('stops at rotation.maxManualRotations with 409 RotationLimitExceeded', async () => {
    // c1 already has 5 manual rotations; the limit is 6
    expect((await d.post('/keys/c1/rotate')).status).to.equal(200);
    const r = await d.post('/keys/c1/rotate');
    expect(r.status).to.equal(409);
    expect(r.body.code).to.equal('RotationLimitExceeded');
    expect((await d.get('/keys/c1')).body.latestVersion).to.equal(7);
  });

  it('refuses the default key and disabled keys with 409 KeyStateConflict', async () => {
    const def = await d.post('/keys/default/rotate');
    expect(def.status).to.equal(409);
    expect(def.body.code).to.equal('KeyStateConflict');
    await d.createKey('off', 'aes256-gcm96');
    await d.post('/keys/off/disable');
    expect((await d.post('/keys/off/rotate')).body.code).to.equal('KeyStateConflict');
  });
});

describe('rotation: scheduled (Agenda on MongoDB, testing clock)', function () {
  this.timeout(180_000);
  let stack: TestStack;
  let d: Daemon;
  before(async () => {
    stack = await TestStack.create({ name: 'rot-sched', config: { rotation: { evaluationIntervalSeconds: 1, maxManualRotations: 10 } } });
    d = await stack.start();
  });
  after(() => stack.cleanup());

  it('rotates a due key within one evaluation interval, audited kms.rotate.scheduled, next = last + period', async () => {
    const k = await d.createKey('sched', 'aes256-gcm96', { keyRotationEnabled: true, rotationPeriodInDays: 30 });
    expect(k.rotationStatus).to.equal('enabled');
    expect(Date.parse(k.nextRotationDate) - Date.parse(k.lastRotationDate)).to.equal(30 * DAY * 1000);
    await d.advanceClock(31 * DAY);
    const r = await waitFor('scheduled rotation', async () => {
      const g = await d.get('/keys/sched');
      return g.body.latestVersion === 2 ? g : undefined;
    });
    expect(Date.parse(r.body.nextRotationDate) - Date.parse(r.body.lastRotationDate)).to.equal(30 * DAY * 1000);
    const audit = await d.get(`/audit?keyIdentity=${k.identity}&action=kms.rotate.scheduled`);
    expect(audit.body.events).to.have.length(1);
    expect(audit.body.events[0].keyVersion).to.equal('2');
    await new Promise((res) => setTimeout(res, 2500));
    expect((await d.get('/keys/sched')).body.latestVersion).to.equal(2); // once, not once per evaluation
  });

  it('suspends a disabled key (policy kept) and rotates it once, not once per missed period, after re-enable', async () => {
    await d.createKey('susp', 'aes256-gcm96', { keyRotationEnabled: true, rotationPeriodInDays: 10 });
    const off = await d.post('/keys/susp/disable');
    expect(off.body.rotationStatus).to.equal('suspended');
    expect(off.body.keyRotationEnabled).to.equal(true);
    await d.advanceClock(55 * DAY);
    await new Promise((res) => setTimeout(res, 2500));
    expect((await d.get('/keys/susp')).body.latestVersion).to.equal(1);
    await d.post('/keys/susp/enable');
    await waitFor('rotation after enable', async () => (await d.get('/keys/susp')).body.latestVersion === 2);
    await new Promise((res) => setTimeout(res, 2500));
    const g = await d.get('/keys/susp');
    expect(g.body.latestVersion).to.equal(2);
    expect(g.body.rotationStatus).to.equal('enabled');
  });

  it('a shortened period whose new date is already past rotates at once, then follows the new schedule', async () => {
    await d.createKey('shorten', 'hmac-sha256', { keyRotationEnabled: true, rotationPeriodInDays: 90 });
    await d.advanceClock(10 * DAY);
    const r = await d.patch('/keys/shorten/rotation', { keyRotationEnabled: true, rotationPeriodInDays: 5 });
    expect(r.status).to.equal(200);
    expect(r.body.latestVersion).to.equal(2);
    expect(r.body.rotationPeriodInDays).to.equal(5);
    expect(Date.parse(r.body.nextRotationDate) - Date.parse(r.body.lastRotationDate)).to.equal(5 * DAY * 1000);
  });

  it('PATCH rotation validates the period and refuses the default key', async () => {
    await d.createKey('pol', 'aes256-gcm96');
    expect((await d.patch('/keys/pol/rotation', { keyRotationEnabled: true })).body.code).to.equal('ValidationError');
    expect((await d.patch('/keys/pol/rotation', { keyRotationEnabled: true, rotationPeriodInDays: 0 })).body.code).to.equal('ValidationError');
    expect((await d.patch('/keys/pol/rotation', { keyRotationEnabled: true, rotationPeriodInDays: 3651 })).body.code).to.equal('ValidationError');
    expect((await d.patch('/keys/pol/rotation', { keyRotationEnabled: true, rotationPeriodInDays: 1.5 })).body.code).to.equal('ValidationError');
    const ok = await d.patch('/keys/pol/rotation', { keyRotationEnabled: true, rotationPeriodInDays: 3650 });
    expect(ok.body.keyRotationEnabled).to.equal(true);
    const off = await d.patch('/keys/pol/rotation', {});
    expect(off.body.keyRotationEnabled).to.equal(false);
    expect(off.body.rotationStatus).to.equal('disabled');
    expect(off.body.nextRotationDate).to.equal(null);
    expect((await d.patch('/keys/default/rotation', { keyRotationEnabled: true, rotationPeriodInDays: 30 })).body.code).to.equal('KeyStateConflict');
  });

  it('a daemon that was down catches up on start', async () => {
    await d.createKey('catchup', 'aes256-gcm96', { keyRotationEnabled: true, rotationPeriodInDays: 7 });
    await d.stop();
    stack.daemons.splice(0);
    // move the shared clock forward while no daemon runs (it lives in SQLite)
    await sql(stack, "UPDATE settings SET value = CAST(value AS INTEGER) + ? WHERE name = 'clock_offset_ms'", [8 * DAY * 1000]);
    d = await stack.start();
    await waitFor('catch-up rotation', async () => (await d.get('/keys/catchup')).body.latestVersion === 2);
  });
});

describe('rotation: exactly once with two daemons on one data dir, token and MongoDB', function () {
  this.timeout(300_000);
  let stack: TestStack;
  after(() => stack.cleanup());

  it('2 daemons × 200 due keys → each key rotated exactly once', async () => {
    stack = await TestStack.create({ name: 'rot-two', config: { rotation: { evaluationIntervalSeconds: 1, maxManualRotations: 10 } } });
    const a = await stack.start();
    const b = await stack.start();
    const ids: string[] = [];
    for (let i = 0; i < 200; i += 20) {
      const batch = await Promise.all(
        Array.from({ length: 20 }, (_, j) => (j % 2 ? a : b).createKey(`due-${i + j}`, 'aes256-gcm96', { keyRotationEnabled: true, rotationPeriodInDays: 1 })),
      );
      ids.push(...batch.map((k) => k.identity));
    }
    await a.advanceClock(2 * DAY);
    await waitFor(
      'all 200 rotated',
      async () => {
        const rows = await sql<{ n: number }>(stack, "SELECT COUNT(*) AS n FROM keys WHERE slug LIKE 'due-%' AND latest_version >= 2");
        return rows[0]!.n === 200;
      },
      120_000,
      1000,
    );
    await new Promise((res) => setTimeout(res, 3000)); // further evaluations on both daemons must not add versions
    const counts = await sql<{ key_identity: string; n: number }>(
      stack,
      "SELECT key_identity, COUNT(*) AS n FROM key_versions WHERE key_identity IN (SELECT identity FROM keys WHERE slug LIKE 'due-%') GROUP BY key_identity",
    );
    expect(counts).to.have.length(200);
    expect(counts.every((c) => c.n === 2)).to.equal(true);
    const audit = await sql<{ n: number }>(stack, "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'kms.rotate.scheduled'");
    expect(audit[0]!.n).to.equal(200);
    // losers destroyed their objects: exactly one token object per recorded version
    const objects = inspectToken(stack, 'kmsd-nl-01').filter((o) => ids.some((id) => o.id.startsWith(`kmsd/k/${id}/`)));
    expect(objects).to.have.length(400);
  });
});

describe('rotation: crash safety (SIGKILL during a rotation storm) and reconciliation', function () {
  this.timeout(300_000);
  let stack: TestStack;
  after(() => stack.cleanup());

  it('after repeated kill -9, every recorded version exists in the token, versions are contiguous, old ciphertext decrypts, orphans are destroyed', async () => {
    stack = await TestStack.create({ name: 'rot-crash', config: { rotation: { evaluationIntervalSeconds: 3600, maxManualRotations: 1000 } } });
    let d = await stack.start();
    const keys = await Promise.all(Array.from({ length: 6 }, (_, i) => d.createKey(`crash-${i}`, i % 2 ? 'aes256-gcm96' : 'aes128-gcm96')));
    const ciphertexts: { key: string; ct: string; pt: string }[] = [];
    for (let round = 0; round < 4; round++) {
      for (const k of keys) {
        const pt = b64(`round ${round} ${k.identity}`);
        const e = await d.post(`/keys/${k.identity}/encrypt`, { plaintext: pt });
        expect(e.status).to.equal(200);
        ciphertexts.push({ key: k.identity, ct: e.body.ciphertext, pt });
      }
      // a storm of rotations, and a SIGKILL while they are in flight
      const storm = keys.flatMap((k) => Array.from({ length: 4 }, () => d.post(`/keys/${k.identity}/rotate`).catch(() => undefined)));
      await new Promise((res) => setTimeout(res, 30 + round * 25));
      await d.kill();
      await Promise.all(storm);
      stack.daemons.splice(0);
      d = await stack.start();
    }
    // contiguity: versions 1..latest with no gap, latest_version matches
    for (const k of keys) {
      const v = await versionsOf(stack, k.identity);
      expect(v).to.deep.equal(Array.from({ length: v.length }, (_, i) => i + 1));
      const row = await sql<{ latest_version: number }>(stack, 'SELECT latest_version FROM keys WHERE identity = ?', [k.identity]);
      expect(row[0]!.latest_version).to.equal(v.length);
    }
    // every ciphertext made before any crash still decrypts
    for (const c of ciphertexts) {
      const r = await d.post(`/keys/${c.key}/decrypt`, { ciphertext: c.ct });
      expect(r.status, JSON.stringify(r.body)).to.equal(200);
      expect(r.body.plaintext).to.equal(c.pt);
    }
    // reconciliation ran at start: token objects == recorded versions (orphans from killed daemons destroyed)
    const recorded = new Set((await sql<{ cka_id: string }>(stack, 'SELECT cka_id FROM key_versions')).map((r) => r.cka_id));
    const onToken = inspectToken(stack, 'kmsd-nl-01').filter((o) => o.id.startsWith('kmsd/k/'));
    const unknown = onToken.filter((o) => !recorded.has(o.id));
    expect(unknown, JSON.stringify(unknown.map((o) => o.id))).to.have.length(0);
    for (const id of recorded) expect(onToken.some((o) => o.id === id), `missing object ${id}`).to.equal(true);
  });
});

describe('rotation: MongoDB stopped and restarted mid-test', function () {
  this.timeout(180_000);
  let stack: TestStack;
  let mongo: MongoServer;
  after(async () => {
    await stack.cleanup();
    await mongo.stop();
  });

  it('manual rotation and crypto keep working without MongoDB; scheduled rotation resumes once it returns, without double rotation', async () => {
    mongo = await MongoServer.start('rot-mongo');
    stack = await TestStack.create({ name: 'rot-mongo', mongodbUri: mongo.uri, config: { rotation: { evaluationIntervalSeconds: 1, maxManualRotations: 10 } } });
    const d = await stack.start();
    await waitFor('ready', async () => (await d.call('GET', '/readyz', undefined, { token: null, org: null })).status === 200);
    await d.createKey('mdue', 'aes256-gcm96', { keyRotationEnabled: true, rotationPeriodInDays: 3 });
    await d.createKey('mman', 'aes256-gcm96');
    await mongo.stop();
    await waitFor('degraded', async () => (await d.call('GET', '/readyz', undefined, { token: null, org: null })).status === 503);
    await d.advanceClock(4 * 86_400);
    expect((await d.post('/keys/mman/rotate')).body.latestVersion).to.equal(2);
    expect((await d.post('/keys/mdue/encrypt', { plaintext: 'aGk=' })).status).to.equal(200);
    await new Promise((res) => setTimeout(res, 3000));
    expect((await d.get('/keys/mdue')).body.latestVersion).to.equal(1); // no scheduler while MongoDB is down
    await mongo.resume();
    await waitFor('scheduled rotation after MongoDB returns', async () => (await d.get('/keys/mdue')).body.latestVersion === 2, 60_000, 500);
    await new Promise((res) => setTimeout(res, 3000));
    expect((await d.get('/keys/mdue')).body.latestVersion).to.equal(2);
  });
});
