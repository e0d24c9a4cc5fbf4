import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { b64, OpenSsl } from '../helpers/byok.js';
import { KMSCTL_BIN } from '../helpers/paths.js';
import { sql } from '../helpers/sqlite.js';
import { ORG, TestStack, type Daemon, type Reply } from '../helpers/stack.js';
import { ownMongoUri } from './keys-token.js';

interface AuditEventWire {
  seq: number;
  time: string;
  action: string;
  outcome: string;
  keyIdentity: string | null;
  keyVersion: string | null;
  principal: string | null;
  organisationIdentity: string | null;
  requestId: string | null;
}

describe('audit trail: completeness, tamper evidence, no secrets', function () {
  this.timeout(180_000);
  let stack: TestStack;
  let d: Daemon;
  let ssl: OpenSsl;
  const secrets: string[] = [];

  before(async () => {
    stack = await TestStack.create({
      name: 'audit', mongodbUri: ownMongoUri('audit'),
      principals: [
        { name: 'admin', roles: ['admin'] },
        { name: 'crypto', roles: ['crypto-user'] },
        { name: 'auditor', roles: ['auditor'] },
      ],
      // debug: the most talkative the daemon gets, so "nothing secret in the logs" means something.
      config: { logLevel: 'debug' },
    });
    d = await stack.start();
    ssl = new OpenSsl();
    for (const p of ['admin', 'crypto', 'auditor']) secrets.push(stack.token(p));
  });
  after(async () => {
    ssl?.cleanup();
    await stack?.cleanup();
  });

  const events = async (query = ''): Promise<AuditEventWire[]> => {
    const r = await d.get(`/audit?limit=10000${query}`, { token: stack.token('auditor') });
    expect(r.status, JSON.stringify(r.body)).to.equal(200);
    return r.body.events;
  };
  const verifyHttp = async () => {
    const r = await d.call('GET', '/v1/kms/audit/verify', undefined, { token: stack.token('auditor') });
    expect(r.status).to.equal(200);
    return r.body as { valid: boolean; events: number };
  };
  const verifyCli = () => spawnSync(process.execPath, [KMSCTL_BIN, 'audit', 'verify', '-c', stack.writeConfig({}, 'kmsctl.yaml')], { env: stack.env, encoding: 'utf8' });

  it('every request of a scripted session is exactly one event with its action, outcome, principal, key and requestId', async () => {
    const plaintext = Buffer.from(`TOP-SECRET-${randomBytes(8).toString('hex')}`);
    secrets.push(plaintext.toString(), b64(plaintext));
    const run = `s${randomBytes(3).toString('hex')}`;
    let n = 0;
    const rid = () => `${run}-${++n}`;
    const as = (who: string | null, id: string) => ({ token: who === null ? null : stack.token(who), headers: { 'x-request-id': id } });

    const key = await d.post('/keys', { name: 'audited', keyType: 'aes256-gcm96' }, as('admin', rid()));
    expect(key.status).to.equal(201);
    const k = key.body.identity as string;
    type Step = { id: string; reply: Reply; action: string; outcome: string; principal: string | null; status: number; key: string | null };
    const steps: Step[] = [{ id: `${run}-1`, reply: key, action: 'kms.create', outcome: 'success', principal: 'admin', status: 201, key: k }];
    const step = async (who: string | null, action: string, outcome: string, status: number, keyId: string | null, call: (o: ReturnType<typeof as>) => Promise<Reply>) => {
      const id = rid();
      const reply = await call(as(who, id));
      expect(reply.status, `${id} ${action}: ${JSON.stringify(reply.body)}`).to.equal(status);
      steps.push({ id, reply, action, outcome, principal: who, status, key: keyId });
      return reply;
    };

    const enc = await step('crypto', 'kms.encrypt', 'success', 200, k, (o) => d.post(`/keys/${k}/encrypt`, { plaintext: b64(plaintext) }, o));
    await step('crypto', 'kms.decrypt', 'success', 200, k, (o) => d.post(`/keys/${k}/decrypt`, { ciphertext: enc.body.ciphertext }, o));
    const tampered = enc.body.ciphertext.slice(0, -6) + (enc.body.ciphertext.endsWith('AAAA==') ? 'BBBB==' : 'AAAA==');
    await step('crypto', 'kms.decrypt', 'failure', 422, k, (o) => d.post(`/keys/${k}/decrypt`, { ciphertext: tampered }, o));
    await step('crypto', 'kms.encrypt', 'failure', 400, k, (o) => d.post(`/keys/${k}/encrypt`, { plaintext: '%%not base64%%' }, o));
    await step('crypto', 'kms.rotate', 'denied', 403, k, (o) => d.post(`/keys/${k}/rotate`, undefined, o));
    await step('admin', 'kms.get', 'denied', 404, null, (o) => d.get('/keys/no-such-key', o));
    await step('admin', 'kms.rotate', 'success', 200, k, (o) => d.post(`/keys/${k}/rotate`, undefined, o));
    await step('crypto', 'kms.hmac', 'failure', 400, k, (o) => d.post(`/keys/${k}/hmac`, { input: b64('x') }, o));
    await step('auditor', 'kms.list', 'success', 200, null, (o) => d.get('/keys', o));
    const p = await step('admin', 'kms.import.parameters', 'success', 200, null, (o) =>
      d.post('/keys/import-parameters', { keyType: 'hmac-sha256', wrappingAlgorithm: 'RSA_OAEP_SHA1' }, o),
    );
    const material = ssl.rand(32);
    secrets.push(p.body.importToken, b64(material), material.toString('hex'));
    const imported = await d.post(
      '/keys/import',
      { name: 'audited-import', keyType: 'hmac-sha256', importToken: p.body.importToken, wrappedKeyMaterial: b64(ssl.oaepEncrypt(p.body.wrappingPublicKeyPem, material)) },
      as('admin', rid()),
    );
    expect(imported.status).to.equal(201);
    steps.push({ id: `${run}-${n}`, reply: imported, action: 'kms.import', outcome: 'success', principal: 'admin', status: 201, key: imported.body.identity });
    await step('admin', 'kms.import', 'failure', 400, null, (o) =>
      d.post('/keys/import', { name: 'audited-reuse', keyType: 'hmac-sha256', importToken: p.body.importToken, wrappedKeyMaterial: b64(material) }, o),
    );
    await step('admin', 'kms.export', 'denied', 403, k, (o) => d.post(`/keys/${k}/export`, {}, o));
    await step('admin', 'kms.disable', 'success', 200, k, (o) => d.post(`/keys/${k}/disable`, undefined, o));
    await step('crypto', 'kms.encrypt', 'failure', 409, k, (o) => d.post(`/keys/${k}/encrypt`, { plaintext: b64(plaintext) }, o));
    const unauth = rid();
    const noToken = await d.post(`/keys/${k}/encrypt`, { plaintext: b64(plaintext) }, as(null, unauth));
    expect(noToken.status).to.equal(401);

    const all = await events();
    for (const s of steps) {
      const mine = all.filter((e) => e.requestId === s.id);
      expect(mine, `${s.id} ${s.action}`).to.have.length(1);
      expect(mine[0], `${s.id} ${s.action}`).to.include({ action: s.action, outcome: s.outcome, principal: s.principal, organisationIdentity: ORG });
      if (s.key) expect(mine[0]!.keyIdentity, `${s.id} ${s.action}`).to.equal(s.key);
      expect(s.reply.headers.get('x-request-id')).to.equal(s.id);
    }
    expect(all.find((e) => e.requestId === `${run}-8`)?.keyVersion).to.equal('2'); // the rotation names its new version
    // Unauthenticated calls have no organisation, so only the store shows them; they are recorded all the same.
    const rows = await sql<{ action: string; outcome: string; principal: string | null }>(stack, 'SELECT action, outcome, principal FROM audit_events WHERE request_id = ?', [unauth]);
    expect(rows).to.deep.equal([{ action: 'kms.encrypt', outcome: 'denied', principal: null }]);
  });

  it('GET /audit filters by keyIdentity, action, since and limit, oldest first', async () => {
    const k = await d.createKey('filtered', 'aes256-gcm96');
    await d.post(`/keys/${k.identity}/encrypt`, { plaintext: b64('a') });
    await d.advanceClock(60);
    await d.post(`/keys/${k.identity}/encrypt`, { plaintext: b64('b') });
    await d.post(`/keys/${k.identity}/encrypt`, { plaintext: b64('c') });
    const byKey = await events(`&keyIdentity=${k.identity}`);
    expect(byKey.map((e) => e.action)).to.deep.equal(['kms.create', 'kms.encrypt', 'kms.encrypt', 'kms.encrypt']);
    expect(byKey.map((e) => e.seq)).to.deep.equal([...byKey.map((e) => e.seq)].sort((a, b) => a - b));
    const since = byKey[2]!.time;
    expect((await events(`&keyIdentity=${k.identity}&since=${encodeURIComponent(since)}`)).map((e) => e.seq)).to.deep.equal([byKey[2]!.seq, byKey[3]!.seq]);
    expect((await events(`&keyIdentity=${k.identity}&action=kms.create`)).map((e) => e.seq)).to.deep.equal([byKey[0]!.seq]);
    const r = await d.get(`/audit?keyIdentity=${k.identity}&limit=2`, { token: stack.token('auditor') });
    expect(r.body.events.map((e: AuditEventWire) => e.seq)).to.deep.equal([byKey[2]!.seq, byKey[3]!.seq]);
    const bad = await d.get('/audit?limit=0', { token: stack.token('auditor') });
    expect(bad.status).to.equal(400);
    const denied = await d.get('/audit', { token: stack.token('crypto') });
    expect(denied.status).to.equal(403);
  });

  it('verify detects an edited row and a deleted row, over HTTP and with kmsctl audit verify (exit 1)', async () => {
    const ok = await verifyHttp();
    expect(ok.valid).to.equal(true);
    expect(ok.events).to.be.greaterThan(20);
    const cli = verifyCli();
    expect(cli.status, cli.stderr).to.equal(0);
    expect(JSON.parse(cli.stdout).valid).to.equal(true);
    expect((await d.call('GET', '/v1/kms/audit/verify', undefined, { token: stack.token('crypto') })).status).to.equal(403);

    // Edit: a denied export turned into a success.
    const [victim] = await sql<{ seq: number; outcome: string }>(stack, "SELECT seq, outcome FROM audit_events WHERE action = 'kms.export' AND outcome = 'denied' LIMIT 1");
    expect(victim).to.not.equal(undefined);
    await sql(stack, "UPDATE audit_events SET outcome = 'success' WHERE seq = ?", [victim!.seq]);
    expect((await verifyHttp()).valid).to.equal(false);
    const edited = verifyCli();
    expect(edited.status).to.equal(1);
    expect(JSON.parse(edited.stdout)).to.include({ valid: false, brokenAt: victim!.seq });

    // Undoing the edit restores the chain (so it was that row that broke it) …
    await sql(stack, 'UPDATE audit_events SET outcome = ? WHERE seq = ?', [victim!.outcome, victim!.seq]);
    expect((await verifyHttp()).valid).to.equal(true);
    expect(verifyCli().status).to.equal(0);

    // … and deleting a row in the middle breaks it again.
    await sql(stack, 'DELETE FROM audit_events WHERE seq = ?', [victim!.seq + 1]);
    expect((await verifyHttp()).valid).to.equal(false);
    const deleted = verifyCli();
    expect(deleted.status).to.equal(1);
    expect(JSON.parse(deleted.stdout).valid).to.equal(false);
  });

  it('no plaintext, key material, import tokens or bearer tokens in any audit row, the import_tokens table or the daemon log', async () => {
    // One more pass through the paths that handle secrets, including failing ones.
    const k = await d.createKey('secret-paths', 'aes256-gcm96', { exportAllowed: true });
    const pt = Buffer.from(`PLAINTEXT-${randomBytes(8).toString('hex')}`);
    secrets.push(pt.toString(), b64(pt));
    await d.post(`/keys/${k.identity}/encrypt`, { plaintext: b64(pt), aad: '%%bad%%' });
    await d.post(`/keys/${k.identity}/encrypt`, { plaintext: b64(pt) });
    const wrapping = (await d.get('/wrapping-key')).body.publicKey;
    const material = ssl.rand(32);
    secrets.push(b64(material), material.toString('hex'));
    const blob = b64(ssl.twoPart(wrapping, material));
    await d.post('/keys', { name: 'secret-import', keyType: 'aes256-gcm96', importKeyMaterial: blob, exportAllowed: true });
    await d.post('/keys', { name: 'secret-import-bad', keyType: 'aes128-gcm96', importKeyMaterial: blob });
    const gen = await d.post(`/keys/${k.identity}/generate-data-key`, {});
    secrets.push(gen.body.plaintext);

    const rows = JSON.stringify(await sql(stack, 'SELECT * FROM audit_events'));
    const tokens = JSON.stringify(await sql(stack, 'SELECT * FROM import_tokens'));
    expect(secrets.length).to.be.greaterThan(8);
    for (const s of secrets) {
      expect(rows.includes(s), `audit rows contain a secret (${s.slice(0, 12)}…)`).to.equal(false);
      expect(tokens.includes(s), `import_tokens contains a secret (${s.slice(0, 12)}…)`).to.equal(false);
      expect(d.logs.includes(s), `daemon log contains a secret (${s.slice(0, 12)}…)`).to.equal(false);
    }
  });
});
