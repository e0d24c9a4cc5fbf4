import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { sharedPostgres } from '../helpers/hooks.js';
import { KMSCTL_BIN } from '../helpers/paths.js';
import { PostgresServer } from '../helpers/postgres.js';
import { sql } from '../helpers/sqlite.js';
import { inspectToken } from '../helpers/token-inspect.js';
import { TestStack, waitFor, type Daemon } from '../helpers/stack.js';

describe('cluster store: kmsd on PostgreSQL (store.postgres)', function () {
  this.timeout(180_000);
  let stack: TestStack;
  let uri: string;
  let a: Daemon;
  let b: Daemon;

  before(async () => {
    uri = await (await sharedPostgres()).createDatabase('daemon');
    stack = await TestStack.create({ name: 'pg-daemon', config: {} });
    stack.config.store = { postgres: { uri } };
    a = await stack.start();
  });
  after(() => stack.cleanup());

  it('readyz names the store; /metrics has the store metrics; nothing is written to SQLite', async () => {
    const r = await a.call('GET', '/readyz', undefined, { token: null, org: null });
    expect(r.status).to.equal(200);
    expect(r.body.store).to.equal('postgres');
    expect(r.body.checks.postgres).to.equal(true);
    const m = await a.call<string>('GET', '/metrics', undefined, { token: null, org: null });
    expect(m.body).to.match(/^kmsd_store_query_duration_seconds_count(\{[^}]*\})? [1-9]/m);
    expect(m.body).to.match(/^kmsd_store_failovers_total(\{[^}]*\})? 0$/m);
    expect(existsSync(path.join(stack.dataDir, 'kmsd.sqlite'))).to.equal(false);
  });

  it('create, encrypt, decrypt, rotate, old ciphertext still decrypts; rows and audit chain are in PostgreSQL', async () => {
    const k = await a.createKey('pg-basic', 'aes256-gcm96');
    const enc1 = await a.post(`/keys/${k.identity}/encrypt`, { plaintext: 'aGVsbG8=' });
    expect(enc1.status).to.equal(200);
    const rot = await a.post(`/keys/${k.identity}/rotate`);
    expect(rot.status).to.equal(200);
    expect(rot.body.latestVersion).to.equal(2);
    const enc2 = await a.post(`/keys/${k.identity}/encrypt`, { plaintext: 'aGVsbG8=' });
    expect(enc2.body.ciphertext).to.match(/^kms:v2:/);
    for (const c of [enc1.body.ciphertext, enc2.body.ciphertext]) {
      const dec = await a.post(`/keys/${k.identity}/decrypt`, { ciphertext: c });
      expect(dec.status).to.equal(200);
      expect(dec.body.plaintext).to.equal('aGVsbG8=');
    }
    const versions = await PostgresServer.sql<{ version: number }>(uri, 'SELECT version FROM key_versions WHERE key_identity = $1 ORDER BY version', [k.identity]);
    expect(versions.map((v) => v.version)).to.deep.equal([1, 2]);
    const audit = await PostgresServer.sql<{ action: string }>(uri, 'SELECT action FROM audit_events WHERE key_identity = $1 ORDER BY seq', [k.identity]);
    expect(audit.map((x) => x.action)).to.include.members(['kms.create', 'kms.encrypt', 'kms.rotate', 'kms.decrypt']);
    const v = await a.call('GET', '/v1/kms/audit/verify');
    expect(v.status).to.equal(200);
    expect(v.body.valid).to.equal(true);
  });

  it('two daemons on one PostgreSQL and one token: create on A, use on B; disable on A is refused on B', async () => {
    b = await stack.start();
    const k = await a.createKey('pg-shared', 'aes256-gcm96');
    const enc = await waitFor(
      'encrypt on B with A\u2019s key',
      async () => {
        const r = await b.post(`/keys/${k.identity}/encrypt`, { plaintext: 'aGk=' });
        expect([200, 503], JSON.stringify(r.body)).to.include(r.status); // 503 while B re-reads the token index
        return r.status === 200 ? r : undefined;
      },
      20_000,
      100,
    );
    expect((await a.post(`/keys/${k.identity}/decrypt`, { ciphertext: enc.body.ciphertext })).body.plaintext).to.equal('aGk=');

    expect((await a.post(`/keys/${k.identity}/disable`)).status).to.equal(200);
    // B learns it through LISTEN/NOTIFY and the change log (bounded wait, no timing asserted)
    await waitFor('B refuses the disabled key', async () => (await b.post(`/keys/${k.identity}/encrypt`, { plaintext: 'aGk=' })).status === 409, 10_000, 50);
  });

  it('concurrent creates of one name on two daemons → exactly one 201, the other 409', async () => {
    const replies = await Promise.all([a, b, a, b].map((d) => d.post('/keys', { name: 'pg-race', keyType: 'aes256-gcm96' })));
    expect(replies.map((r) => r.status).sort()).to.deep.equal([201, 409, 409, 409]);
  });

  it('one audit chain, appended by both daemons, verifies from either', async () => {
    const k = await b.createKey('pg-audit', 'aes256-gcm96');
    await Promise.all(
      Array.from({ length: 40 }, (_, i) => (i % 2 ? a : b).post(`/keys/${k.identity}/encrypt`, { plaintext: 'aGk=' }).then((r) => expect([200, 503]).to.include(r.status))),
    );
    for (const d of [a, b]) {
      const v = await d.call('GET', '/v1/kms/audit/verify');
      expect(v.body.valid, JSON.stringify(v.body)).to.equal(true);
    }
    const seqs = await PostgresServer.sql<{ n: string; max: string }>(uri, 'SELECT COUNT(*) AS n, MAX(seq) AS max FROM audit_events');
    expect(seqs[0]!.n).to.equal(seqs[0]!.max);
  });
});

describe('kmsctl migrate-store: a single-host SQLite installation into an empty PostgreSQL store', function () {
  this.timeout(180_000);
  let stack: TestStack;
  after(() => stack.cleanup());

  it('copies keys, versions and the audit chain as it is plus one kms.store.migrate record; keys usable at once; a non-empty target is refused', async () => {
    stack = await TestStack.create({ name: 'pg-migrate' });
    const old = await stack.start();
    const k = await old.createKey('to-migrate', 'aes256-gcm96');
    await old.post(`/keys/${k.identity}/rotate`);
    const enc = await old.post(`/keys/${k.identity}/encrypt`, { plaintext: 'b2xk' });
    expect(enc.status).to.equal(200);
    const before = (await old.call('GET', '/v1/kms/audit/verify')).body;
    expect(before.valid).to.equal(true);
    await old.stop();

    const uri = await (await sharedPostgres()).createDatabase('migrate');
    const fromConfig = stack.writeConfig({}, 'from.yaml');
    const toConfig = stack.writeConfig({ store: { postgres: { uri } } }, 'to.yaml');
    const migrate = () => spawnSync(process.execPath, [KMSCTL_BIN, 'migrate-store', '--from-config', fromConfig, '--to-config', toConfig], { env: stack.env, encoding: 'utf8' });
    const first = migrate();
    expect(first.status, first.stderr).to.equal(0);
    // every SQLite audit row (the verify call above added its own) plus the one migrate record
    const sqliteRows = (await sql<{ n: number }>(stack, 'SELECT COUNT(*) AS n FROM audit_events'))[0]!.n;
    expect(sqliteRows).to.be.greaterThan(before.events);
    expect(JSON.parse(first.stdout)).to.deep.include({ keys: 3, versions: 4, auditRecords: sqliteRows, auditChain: { valid: true, events: sqliteRows + 1 } });

    const rows = await PostgresServer.sql<{ action: string }>(uri, 'SELECT action FROM audit_events ORDER BY seq DESC LIMIT 1');
    expect(rows[0]!.action).to.equal('kms.store.migrate');

    const second = migrate();
    expect(second.status).to.not.equal(0);
    expect(second.stderr).to.match(/not empty/);
    expect(await PostgresServer.sql(uri, "SELECT 1 FROM audit_events WHERE action = 'kms.store.migrate'")).to.have.length(1);

    const moved = await stack.start({ store: { postgres: { uri } } });
    const dec = await moved.post(`/keys/${k.identity}/decrypt`, { ciphertext: enc.body.ciphertext });
    expect(dec.status, JSON.stringify(dec.body)).to.equal(200);
    expect(dec.body.plaintext).to.equal('b2xk');
    const got = await moved.get(`/keys/${k.identity}`);
    expect(got.body.latestVersion).to.equal(2);
    const v = await moved.call('GET', '/v1/kms/audit/verify');
    expect(v.body.valid).to.equal(true);
    expect(v.body.events).to.be.greaterThan(before.events);
  });
});

describe('cluster store: PostgreSQL unavailable → 503 StoreUnavailable, then recovery without a restart', function () {
  this.timeout(240_000);
  let stack: TestStack;
  let server: PostgresServer;
  after(async () => {
    await stack?.cleanup();
    await server?.destroy();
  });

  it('a write while no server accepts it answers 503 StoreUnavailable (never 500); the node reconnects by itself and counts the failover', async () => {
    server = await PostgresServer.start('outage');
    const uri = await server.createDatabase('outage');
    stack = await TestStack.create({ name: 'pg-outage' });
    const d = await stack.start({ store: { postgres: { uri } } });
    const k = await d.createKey('before-outage', 'aes256-gcm96');

    await server.stop('immediate');
    const during = await Promise.all([
      d.post('/keys', { name: 'during-outage', keyType: 'aes256-gcm96' }),
      d.post(`/keys/${k.identity}/encrypt`, { plaintext: 'aGk=' }), // fail-closed: its audit record cannot commit
    ]);
    for (const r of during) {
      expect(r.status, JSON.stringify(r.body)).to.equal(503);
      expect(r.body.code).to.equal('StoreUnavailable');
    }
    const ready = await d.call('GET', '/readyz', undefined, { token: null, org: null });
    expect(ready.status).to.equal(503);
    expect(ready.body.down).to.include('postgres');

    await server.resume();
    const enc = await waitFor('encrypt works again', async () => {
      const r = await d.post(`/keys/${k.identity}/encrypt`, { plaintext: 'aGk=' });
      expect([200, 503]).to.include(r.status);
      return r.status === 200 ? r : undefined;
    }, 60_000, 250);
    expect((await d.post(`/keys/${k.identity}/decrypt`, { ciphertext: enc.body.ciphertext })).body.plaintext).to.equal('aGk=');
    expect((await d.post('/keys', { name: 'after-outage', keyType: 'aes256-gcm96' })).status).to.equal(201);
    const m = await d.call<string>('GET', '/metrics', undefined, { token: null, org: null });
    expect(Number(/^kmsd_store_failovers_total(?:\{[^}]*\})? (\d+)$/m.exec(m.body)?.[1] ?? 0)).to.be.greaterThan(0);
    expect((await d.call('GET', '/v1/kms/audit/verify')).body.valid).to.equal(true);
    expect(d.alive).to.equal(true);
  });
});

describe('cluster store: rotations across two nodes on PostgreSQL', function () {
  this.timeout(240_000);
  let stack: TestStack;
  after(() => stack.cleanup());

  it('parallel manual rotations split over two nodes → contiguous versions; 20 due keys → each rotated exactly once cluster-wide, token objects = versions', async () => {
    const uri = await (await sharedPostgres()).createDatabase('rotate');
    stack = await TestStack.create({ name: 'pg-rotate', config: { rotation: { evaluationIntervalSeconds: 1, maxManualRotations: 10 } } });
    stack.config.store = { postgres: { uri } };
    const a = await stack.start();
    const b = await stack.start();

    const manual = await a.createKey('pg-manual', 'aes256-gcm96');
    await waitFor('B knows the key', async () => (await b.get(`/keys/${manual.identity}`)).status === 200, 10_000, 50);
    const replies = await Promise.all(Array.from({ length: 8 }, (_, i) => (i % 2 ? a : b).post(`/keys/${manual.identity}/rotate`)));
    // each node queues its own; across nodes the key row lock (FOR UPDATE) orders them: none lost
    for (const r of replies) expect(r.status, JSON.stringify(r.body)).to.equal(200);
    const versions = await PostgresServer.sql<{ version: number }>(uri, 'SELECT version FROM key_versions WHERE key_identity = $1 ORDER BY version', [manual.identity]);
    expect(versions.map((v) => v.version)).to.deep.equal([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // each reply, and its audit record, names the version that rotation made (not a later one the node already heard of)
    expect(replies.map((r) => r.body.latestVersion).sort()).to.deep.equal([2, 3, 4, 5, 6, 7, 8, 9]);
    const rotated = await PostgresServer.sql<{ key_version: string }>(uri, "SELECT key_version FROM audit_events WHERE action = 'kms.rotate' AND key_identity = $1", [manual.identity]);
    expect(rotated.map((r) => Number(r.key_version)).sort()).to.deep.equal([2, 3, 4, 5, 6, 7, 8, 9]);

    const ids: string[] = [];
    const batch = await Promise.all(
      Array.from({ length: 20 }, (_, j) => (j % 2 ? a : b).createKey(`pg-due-${j}`, 'aes256-gcm96', { keyRotationEnabled: true, rotationPeriodInDays: 1 })),
    );
    ids.push(...batch.map((k) => k.identity));
    await a.advanceClock(2 * 86_400);
    await waitFor(
      'all 20 rotated',
      async () => Number((await PostgresServer.sql<{ n: number }>(uri, "SELECT COUNT(*) AS n FROM keys WHERE slug LIKE 'pg-due-%' AND latest_version >= 2"))[0]!.n) === 20,
      120_000,
      500,
    );
    await new Promise((res) => setTimeout(res, 3000)); // further evaluations on both nodes must not add versions
    const counts = await PostgresServer.sql<{ n: number }>(
      uri,
      "SELECT COUNT(*) AS n FROM key_versions WHERE key_identity IN (SELECT identity FROM keys WHERE slug LIKE 'pg-due-%') GROUP BY key_identity",
    );
    expect(counts).to.have.length(20);
    expect(counts.every((c) => Number(c.n) === 2)).to.equal(true);
    const audit = await PostgresServer.sql<{ n: number }>(uri, "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'kms.rotate.scheduled'");
    expect(Number(audit[0]!.n)).to.equal(20);
    const objects = inspectToken(stack, 'kmsd-nl-01').filter((o) => ids.some((id) => o.id.startsWith(`kmsd/k/${id}/`)));
    expect(objects).to.have.length(40);
  });
});

describe('cluster store: failover to a promoted synchronous standby under load', function () {
  this.timeout(300_000);
  let stack: TestStack;
  let primary: PostgresServer;
  let standby: PostgresServer;
  after(async () => {
    await stack?.cleanup();
    await primary?.destroy();
    await standby?.destroy();
  });

  it('the primary killed (pg_ctl stop -m immediate), the standby promoted: no 5xx but 503, writes resume, nothing acknowledged is lost, the chain verifies', async () => {
    primary = await PostgresServer.start('failover-primary');
    const primaryUri = await primary.createDatabase('failover');
    const db = primaryUri.slice(primaryUri.lastIndexOf('/') + 1);
    standby = await PostgresServer.startStandby(primary, 'failover-standby');
    const uri = `postgresql://kmsd@127.0.0.1:${primary.port},127.0.0.1:${standby.port}/${db}?target_session_attrs=read-write`;
    stack = await TestStack.create({ name: 'pg-failover' });
    const d = await stack.start({ store: { postgres: { uri } } });
    const k = await d.createKey('failover-enc', 'aes256-gcm96');

    const created: string[] = [];
    const ciphertexts: string[] = [];
    const statuses = new Map<number, number>();
    let stop = false;
    let afterPromotion = 0;
    let promoted = false;
    const worker = async (w: number) => {
      for (let i = 0; !stop; i++) {
        const c = await d.post('/keys', { name: `fo-${w}-${i}`, keyType: 'aes256-gcm96' });
        statuses.set(c.status, (statuses.get(c.status) ?? 0) + 1);
        if (c.status === 201) {
          created.push(c.body.identity);
          if (promoted) afterPromotion++;
        }
        const e = await d.post(`/keys/${k.identity}/encrypt`, { plaintext: Buffer.from(`m-${w}-${i}`).toString('base64') });
        statuses.set(e.status, (statuses.get(e.status) ?? 0) + 1);
        if (e.status === 200) ciphertexts.push(e.body.ciphertext);
      }
    };
    const load = Promise.all([0, 1, 2].map(worker));
    await waitFor('some load before the failure', async () => created.length >= 6, 60_000, 50);

    await primary.stop('immediate');
    await standby.promote();
    promoted = true;
    await waitFor('writes resume on the promoted standby', async () => afterPromotion >= 3, 60_000, 100).catch((e) => {
      throw new Error(`${(e as Error).message}; statuses ${JSON.stringify(Object.fromEntries(statuses))}; log:\n${d.logs.slice(-3000)}`);
    });
    stop = true;
    await load;

    const codes = [...statuses.keys()];
    expect(codes.filter((c) => c >= 500 && c !== 503), JSON.stringify(Object.fromEntries(statuses))).to.deep.equal([]);
    expect(codes.every((c) => [200, 201, 503].includes(c)), JSON.stringify(Object.fromEntries(statuses))).to.equal(true);

    // every acknowledged key and ciphertext is there, on the new primary
    const stored = new Set((await PostgresServer.sql<{ identity: string }>(standby.uri(db), 'SELECT identity FROM keys')).map((r) => r.identity));
    expect(created.filter((id) => !stored.has(id))).to.deep.equal([]);
    for (const id of created.slice(-5)) expect((await d.get(`/keys/${id}`)).status).to.equal(200);
    for (const c of ciphertexts.slice(-10)) expect((await d.post(`/keys/${k.identity}/decrypt`, { ciphertext: c })).status).to.equal(200);
    expect((await d.call('GET', '/v1/kms/audit/verify')).body.valid).to.equal(true);
    const m = await d.call<string>('GET', '/metrics', undefined, { token: null, org: null });
    expect(Number(/^kmsd_store_failovers_total(?:\{[^}]*\})? (\d+)$/m.exec(m.body)?.[1] ?? 0)).to.be.greaterThan(0);
    const ready = await d.call('GET', '/readyz', undefined, { token: null, org: null });
    expect(ready.body.checks.postgres).to.equal(true);
  });
});

describe('cluster store: SIGKILL of one node during a rotation storm', function () {
  this.timeout(300_000);
  let stack: TestStack;
  after(() => stack.cleanup());

  it('the other node keeps serving; the killed node restarts consistent; its orphans are destroyed once its lease expired, never the live node\u2019s objects', async () => {
    const uri = await (await sharedPostgres()).createDatabase('storm');
    stack = await TestStack.create({ name: 'pg-storm', config: { rotation: { evaluationIntervalSeconds: 1, maxManualRotations: 1000 } } });
    stack.config.store = { postgres: { uri } };
    let a = await stack.start();
    const b = await stack.start();
    const keys = await Promise.all(Array.from({ length: 4 }, (_, i) => a.createKey(`storm-${i}`, 'aes256-gcm96')));
    const ciphertexts: { key: string; ct: string }[] = [];
    for (let round = 0; round < 3; round++) {
      for (const k of keys) {
        const e = await b.post(`/keys/${k.identity}/encrypt`, { plaintext: 'c3Rvcm0=' });
        expect([200, 503], JSON.stringify(e.body)).to.include(e.status);
        if (e.status === 200) ciphertexts.push({ key: k.identity, ct: e.body.ciphertext });
      }
      const onA = keys.flatMap((k) => Array.from({ length: 3 }, () => a.post(`/keys/${k.identity}/rotate`).catch(() => undefined)));
      const onB = keys.flatMap((k) => Array.from({ length: 3 }, () => b.post(`/keys/${k.identity}/rotate`)));
      await new Promise((res) => setTimeout(res, 40 + round * 30));
      await a.kill();
      await Promise.all(onA);
      for (const r of await Promise.all(onB)) expect([200, 409, 503], JSON.stringify(r.body)).to.include(r.status);
      stack.daemons.splice(stack.daemons.indexOf(a), 1);
      a = await stack.start();
    }
    expect(b.alive).to.equal(true);
    for (const k of keys) {
      const v = await PostgresServer.sql<{ version: number }>(uri, 'SELECT version FROM key_versions WHERE key_identity = $1 ORDER BY version', [k.identity]);
      expect(v.map((x) => x.version)).to.deep.equal(Array.from({ length: v.length }, (_, i) => i + 1));
      expect((await a.get(`/keys/${k.identity}`)).body.latestVersion).to.equal(v.length);
    }
    for (const c of ciphertexts) expect((await a.post(`/keys/${c.key}/decrypt`, { ciphertext: c.ct })).body.plaintext).to.equal('c3Rvcm0=');
    // the killed processes' leases run out (30 s); the next reconciliation destroys their unrecorded objects
    await waitFor(
      'token objects = recorded versions',
      async () => {
        const recorded = new Set((await PostgresServer.sql<{ cka_id: string }>(uri, 'SELECT cka_id FROM key_versions')).map((r) => r.cka_id));
        const onToken = inspectToken(stack, 'kmsd-nl-01').filter((o) => o.id.startsWith('kmsd/k/'));
        for (const id of recorded) expect(onToken.some((o) => o.id === id), `missing object ${id}`).to.equal(true);
        return onToken.length === recorded.size;
      },
      90_000,
      2000,
    );
  });
});
