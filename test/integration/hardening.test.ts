import { expect } from 'chai';
import { sql } from '../helpers/sqlite.js';
import { ORG, TestStack, type Daemon, type Reply } from '../helpers/stack.js';
import { ownMongoUri } from './keys-token.js';

/**
 * Issue 21 (an attack run): a testing clock that could brick the daemon and moved unaudited,
 * unbounded audit rows from rejected requests, and one organisation's key-pair generation
 * starving the others.
 */
const YEAR_S = 365 * 86_400;
const MAX_OFFSET_S = 100 * YEAR_S;
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const IMPORT_PARAMS = { keyType: 'aes256-gcm96', wrappingAlgorithm: 'RSA_OAEP_SHA1' };

interface AuditRow {
  seq: number;
  action: string;
  outcome: string;
  region: string | null;
  key_identity: string | null;
  organisation: string | null;
  principal: string | null;
  request_id: string | null;
  detail: string | null;
  bytes: number;
}
const ROW_BYTES =
  "length(CAST(time AS BLOB)) + length(CAST(action AS BLOB)) + length(CAST(outcome AS BLOB)) + length(CAST(COALESCE(region,'') AS BLOB)) + length(CAST(COALESCE(key_identity,'') AS BLOB)) + length(CAST(COALESCE(key_version,'') AS BLOB)) + length(CAST(COALESCE(principal,'') AS BLOB)) + length(CAST(COALESCE(organisation,'') AS BLOB)) + length(CAST(COALESCE(request_id,'') AS BLOB)) + length(CAST(COALESCE(detail,'') AS BLOB))";

describe('hardening (issue 21): the testing clock', function () {
  this.timeout(180_000);
  let stack: TestStack;
  let d: Daemon;

  before(async () => {
    stack = await TestStack.create({
      name: 'hard-clock',
      mongodbUri: ownMongoUri('hard-clock'),
      principals: [
        { name: 'admin', roles: ['admin'] },
        // an admin of an organisation with KMS disabled only: may still move the clock (contract), audited
        { name: 'off-admin', roles: ['admin'], organisations: ['org-off'] },
        { name: 'auditor', roles: ['auditor'] },
        { name: 'other-auditor', roles: ['auditor'], organisations: ['org-other'] },
      ],
    });
    d = await stack.start();
  });
  after(async () => {
    await stack?.cleanup();
  });

  const move = (advanceSeconds: unknown, token = stack.token('admin')) =>
    d.call('POST', '/v1/testing/clock', { advanceSeconds }, { org: null, token });

  it('refuses non-finite, negative, non-numeric and absurd moves with 400 ValidationError', async () => {
    for (const bad of [-1, '100', null, 1e300, MAX_OFFSET_S + 1]) {
      const r = await move(bad);
      expect(r.status, JSON.stringify(bad)).to.equal(400);
      expect(r.body.code).to.equal('ValidationError');
    }
    const raw = await d.call('POST', '/v1/testing/clock', undefined, { org: null, raw: '{"advanceSeconds": 1e999}' });
    expect(raw.status).to.equal(400);
  });

  it('every move is audited as kms.testing.clock (principal, seconds) and shows in every organisation\u2019s listing', async () => {
    const r = await move(60, stack.token('off-admin'));
    expect(r.status).to.equal(200);
    for (const [org, auditor] of [
      [ORG, 'auditor'],
      ['org-other', 'other-auditor'],
    ] as const) {
      const list = await d.get('/audit?action=kms.testing.clock', { org, token: stack.token(auditor) });
      expect(list.status).to.equal(200);
      const ev = (list.body.events as { principal: string; outcome: string; detail?: { advanceSeconds?: number } }[]).find(
        (e) => e.principal === 'off-admin',
      );
      expect(ev, `${org}: ${JSON.stringify(list.body.events)}`).to.not.equal(undefined);
      expect(ev!.outcome).to.equal('success');
      expect(ev!.detail?.advanceSeconds).to.equal(60);
    }
  });

  it('caps the total offset at 100 years: a move beyond is 400, and every date the daemon computes stays RFC 3339', async () => {
    const now = await d.call('GET', '/v1/testing/clock', undefined, { org: null });
    const left = MAX_OFFSET_S - now.body.offsetSeconds;
    expect((await move(left)).status).to.equal(200);
    const beyond = await move(1);
    expect(beyond.status).to.equal(400);
    expect(beyond.body.code).to.equal('ValidationError');
    expect(beyond.body.message).to.match(/100 years/);

    // everything still works at the far end, and every computed date is a valid RFC 3339 string
    const clock = await d.call('GET', '/v1/testing/clock', undefined, { org: null });
    expect(clock.status).to.equal(200);
    expect(clock.body.now).to.match(RFC3339);
    const k = await d.createKey('far-future', 'aes256-gcm96', { keyRotationEnabled: true, rotationPeriodInDays: 3650 });
    expect(k.nextRotationDate).to.match(RFC3339);
    const del = await d.del(`/keys/${k.identity}?pendingWindowInDays=30`);
    expect(del.status).to.equal(200);
    expect(del.body.deletionDate).to.match(RFC3339);
    const p = await d.post('/keys/import-parameters', IMPORT_PARAMS);
    expect(p.status).to.equal(200);
    expect(p.body.expiresAt).to.match(RFC3339);
    const enc = await d.post('/keys/default/encrypt', { plaintext: 'aGk=' });
    expect(enc.status).to.equal(200);
    expect((await d.call('GET', '/readyz', undefined, { token: null, org: null })).status).to.equal(200);
  });

  it('a daemon whose persisted offset is beyond range (older version) starts and serves, clamped to 100 years', async () => {
    await d.stop();
    await sql(stack, "UPDATE settings SET value = '9000000000000000' WHERE name = 'clock_offset_ms'");
    d = await stack.start();
    const clock = await d.call('GET', '/v1/testing/clock', undefined, { org: null });
    expect(clock.status).to.equal(200);
    expect(clock.body.offsetSeconds).to.equal(MAX_OFFSET_S);
    expect(clock.body.now).to.match(RFC3339);
    expect((await d.post('/keys/default/encrypt', { plaintext: 'aGk=' })).status).to.equal(200);
    expect(d.logs).to.match(/clock offset/i);
  });

  it('/readyz is 503 while the audit trail cannot be written, and 200 again once it can', async () => {
    await sql(stack, "CREATE TRIGGER audit_refuses BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'disk says no'); END");
    try {
      const enc = await d.post('/keys/default/encrypt', { plaintext: 'aGk=' });
      expect(enc.status).to.equal(503);
      expect(enc.body.code).to.equal('StoreUnavailable');
      const ready = await d.call('GET', '/readyz', undefined, { token: null, org: null });
      expect(ready.status).to.equal(503);
      expect(ready.body.down).to.include('audit');
    } finally {
      await sql(stack, 'DROP TRIGGER audit_refuses');
    }
    expect((await d.post('/keys/default/encrypt', { plaintext: 'aGk=' })).status).to.equal(200);
    expect((await d.call('GET', '/readyz', undefined, { token: null, org: null })).status).to.equal(200);
  });
});

describe('hardening (issue 21): bounded audit rows and request fields', function () {
  this.timeout(180_000);
  let stack: TestStack;
  let d: Daemon;

  before(async () => {
    stack = await TestStack.create({ name: 'hard-bounds', mongodbUri: ownMongoUri('hard-bounds') });
    d = await stack.start();
  });
  after(async () => {
    await stack?.cleanup();
  });

  const rowOf = async (requestId: string) => {
    const rows = await sql<AuditRow>(stack, `SELECT *, ${ROW_BYTES} AS bytes FROM audit_events WHERE request_id = ?`, [requestId]);
    expect(rows, requestId).to.have.length(1);
    return rows[0]!;
  };

  it('rejected requests keep only validated fields: no raw region, key id, organisation or request id (both HTTP paths)', async () => {
    const region = "r".repeat(6_000);
    const id = "k".repeat(3_000);
    const cases: { what: string; path: string; o: Parameters<Daemon['call']>[3] }[] = [
      { what: 'fast path, no token', path: `/v1/kms/${region}/keys/${id}/encrypt`, o: { token: null } },
      { what: 'Express, no token', path: `/v1/kms/${region}/keys/${id}/encrypt?x=1`, o: { token: null } },
      { what: 'fast path, foreign organisation', path: `/v1/kms/${region}/keys/${id}/encrypt`, o: { org: "o".repeat(4_000) } },
      { what: 'Express, foreign organisation', path: `/v1/kms/nl-01/keys/${id}`, o: { org: "o".repeat(4_000) } },
      { what: 'fast path, unknown region', path: `/v1/kms/${region}/keys/${id}/encrypt`, o: {} },
      { what: 'Express, unknown key', path: `/v1/kms/nl-01/keys/${id}`, o: {} },
    ];
    for (const c of cases) {
      const requestId = `rid-${Math.random().toString(36).slice(2)}`;
      const method = c.path.endsWith('/encrypt') || c.path.endsWith('?x=1') ? 'POST' : 'GET';
      const r: Reply = await d.call(method, c.path, method === 'POST' ? { plaintext: 'aGk=' } : undefined, { ...c.o, headers: { 'x-request-id': requestId } });
      expect(r.status, c.what).to.be.oneOf([400, 401, 403, 404]);
      const row = await rowOf(requestId);
      expect(row.bytes, c.what).to.be.at.most(2048);
      expect(row.region, c.what).to.be.oneOf([null, 'nl-01']);
      expect(row.key_identity, c.what).to.equal(null);
      expect(row.organisation, c.what).to.be.oneOf([null, ORG]);
    }
  });

  it('a request id beyond 128 printable characters is replaced by a generated one, in the answer and the audit', async () => {
    const r = await d.post('/keys/default/encrypt', { plaintext: 'aGk=' }, { token: null, headers: { 'x-request-id': 'q'.repeat(129) } });
    expect(r.status).to.equal(401);
    const generated = r.headers.get('x-request-id')!;
    expect(generated).to.not.equal('q'.repeat(129));
    const row = await rowOf(generated);
    expect(row.bytes).to.be.at.most(2048);
  });

  it('key metadata is bounded: labels and annotations (count, key, value sizes), description, name', async () => {
    const many = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`l${i}`, 'v']));
    const bad: Record<string, unknown>[] = [
      { labels: many },
      { annotations: many },
      { labels: { ['k'.repeat(129)]: 'v' } },
      { labels: { k: 'v'.repeat(1025) } },
      { annotations: { k: 'v'.repeat(4097) } },
      { description: 'd'.repeat(1025) },
      { name: 'n'.repeat(256) },
    ];
    for (const extra of bad) {
      const r = await d.post('/keys', { name: 'bounded', keyType: 'aes256-gcm96', ...extra });
      expect(r.status, Object.keys(extra).join()).to.equal(400);
      expect(r.body.code).to.equal('ValidationError');
    }
    const atTheLimit = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`${'k'.repeat(120)}${i}`, 'v'.repeat(300)]));
    const ok = await d.post('/keys', { name: 'bounded', keyType: 'aes256-gcm96', labels: atTheLimit, description: 'd'.repeat(1024) });
    expect(ok.status, JSON.stringify(ok.body).slice(0, 300)).to.equal(201);
  });
});

describe('hardening (issue 21): expensive token work is shared fairly between organisations', function () {
  this.timeout(300_000);
  let stack: TestStack;
  let d: Daemon;

  before(async () => {
    stack = await TestStack.create({ name: 'hard-fair', mongodbUri: ownMongoUri('hard-fair') });
    d = await stack.start();
  });
  after(async () => {
    await stack?.cleanup();
  });

  it('one organisation flooding import-parameters gets 429s beyond its share; another organisation\u2019s key creation is served in between', async () => {
    const done: string[] = [];
    let firstRefusal!: () => void;
    const refused = new Promise<void>((resolve) => (firstRefusal = resolve));
    const flood = Array.from({ length: 30 }, () =>
      d.post('/keys/import-parameters', IMPORT_PARAMS, { org: ORG }).then((r) => {
        done.push(`A${r.status}`);
        if (r.status === 429) firstRefusal();
        return r;
      }),
    );
    // B asks once A's queue is full (its first 429), i.e. while A surely has work queued.
    await Promise.race([refused, Promise.all(flood)]);
    const b = await d.post('/keys', { name: 'b-signing', keyType: 'rsa-2048' }, { org: 'org-other' }).then((r) => {
      done.push(`B${r.status}`);
      return r;
    });
    const a = await Promise.all(flood);
    expect(b.status, JSON.stringify(b.body)).to.equal(201);

    const tooMany = a.filter((r) => r.status === 429);
    const served = a.filter((r) => r.status === 200);
    expect(tooMany.length, done.join(' ')).to.be.greaterThan(0);
    expect(served.length + tooMany.length).to.equal(30);
    for (const r of tooMany) {
      expect(r.body.code).to.equal('TooManyRequests');
      expect(r.body.message).to.match(/share|pending/);
      expect(Number(r.headers.get('retry-after'))).to.be.at.least(1);
    }
    // B was served while A still had accepted work queued: some of A's successes came after B.
    const bAt = done.indexOf('B201');
    const aServedAfterB = done.slice(bAt + 1).filter((x) => x === 'A200').length;
    expect(aServedAfterB, done.join(' ')).to.be.greaterThan(1);
  });

  it('an organisation holding limits.maxOpenImportTokens unexpired, unused import tokens gets 429 (also under concurrency)', async () => {
    await d.stop();
    d = await stack.start({ limits: { maxBodyBytes: 65536, maxBatchItems: 1000, maxOpenImportTokens: 3 } });
    const org = 'org-other';
    // org-other may already hold some from the first test: start from a clean slate by expiring them all.
    await d.advanceClock(25 * 3600);
    const parallel = await Promise.all(Array.from({ length: 6 }, () => d.post('/keys/import-parameters', IMPORT_PARAMS, { org })));
    expect(parallel.filter((r) => r.status === 200)).to.have.length(3);
    const refusals = parallel.filter((r) => r.status === 429);
    expect(refusals).to.have.length(3);
    for (const r of refusals) {
      expect(r.body.code).to.equal('TooManyRequests');
      expect(r.body.message).to.match(/maxOpenImportTokens/);
      expect(Number(r.headers.get('retry-after'))).to.be.at.least(1);
    }
    // another organisation is not affected
    expect((await d.post('/keys/import-parameters', IMPORT_PARAMS, { org: ORG })).status).to.equal(200);
    // once they expire (daemon clock), the organisation may ask again
    await d.advanceClock(24 * 3600 + 1);
    expect((await d.post('/keys/import-parameters', IMPORT_PARAMS, { org })).status).to.equal(200);
  });
});
