import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { MongoServer } from '../helpers/mongo.js';
import { KMSCTL_BIN, KMSD_BIN } from '../helpers/paths.js';
import { ORG, TestStack, waitFor, type Daemon } from '../helpers/stack.js';
import { probeWorkingCopies } from '../helpers/working-copy-probe.js';

function runKmsd(stack: TestStack, config: unknown, extraArgs: string[] = [], env: NodeJS.ProcessEnv = {}) {
  const file = path.join(stack.dir, `bad-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, typeof config === 'string' ? config : stringify(config));
  return spawnSync(process.execPath, [KMSD_BIN, '--config', file, '--check-config', ...extraArgs], {
    env: { ...stack.env, ...env },
    encoding: 'utf8',
  });
}

describe('foundation: config, auth, token layer, store, readiness, shutdown', function () {
  this.timeout(120_000);
  let stack: TestStack;
  let d: Daemon;

  before(async () => {
    stack = await TestStack.create({
      name: 'foundation',
      principals: [
        { name: 'admin', roles: ['admin'] },
        { name: 'reader', roles: ['auditor'] },
      ],
      config: { limits: { maxBodyBytes: 2048, maxBatchItems: 10 } },
    });
    d = await stack.start();
  });
  after(() => stack.cleanup());

  describe('config validation', () => {
    it('accepts the generated config (and KMSD_CONFIG instead of --config)', () => {
      const file = stack.writeConfig({}, 'ok.yaml');
      const r = spawnSync(process.execPath, [KMSD_BIN, '--check-config'], { env: { ...stack.env, KMSD_CONFIG: file }, encoding: 'utf8' });
      expect(r.status, r.stderr).to.equal(0);
      expect(r.stdout).to.contain('config OK');
    });

    const cases: [string, (c: Record<string, any>) => unknown, RegExp][] = [
      ['a missing tokenLabel', (c) => ({ ...c, regions: [{ ...c.regions[0], tokenLabel: undefined }] }), /regions\[0\]\.tokenLabel/],
      ['a string where a number belongs', (c) => ({ ...c, limits: { maxBodyBytes: 'big' } }), /limits\.maxBodyBytes/],
      ['an unknown key', (c) => ({ ...c, listen: { ...c.listen, color: 'red' } }), /listen.*color/],
      ['a PIN in the file instead of pinEnv/pinFile', (c) => ({ ...c, regions: [{ ...c.regions[0], pinEnv: undefined, pin: '1234' }] }), /regions\[0\]/],
      ['an unknown role', (c) => ({ ...c, principals: [{ ...c.principals[0], roles: ['root'] }] }), /principals\[0\]\.roles\[0\]/],
      ['a bad mongodbUri', (c) => ({ ...c, mongodbUri: 'http://x' }), /mongodbUri/],
      ['an XKS keystore on an unknown region', (c) => ({
        ...c,
        xks: { listen: { port: 0 }, keystores: [{ uriPrefix: 'p', organisation: ORG, region: 'zz-99', sigv4Region: 'us-east-1',
          credentials: [{ accessKeyId: 'ABCDEFGHIJKLMNOPQRST', secretAccessKeyEnv: 'X' }] }] },
      }), /xks\.keystores\[0\]\.region/],
    ];
    for (const [what, mutate, field] of cases)
      it(`exits non-zero naming the field for ${what}`, () => {
        const r = runKmsd(stack, mutate(stack.config));
        expect(r.status).to.not.equal(0);
        expect(r.stderr).to.match(field);
      });

    it('exits non-zero on YAML that does not parse and on a missing file', () => {
      expect(runKmsd(stack, 'listen: [unclosed').status).to.equal(2);
      const r = spawnSync(process.execPath, [KMSD_BIN, '--config', '/nonexistent.yaml'], { encoding: 'utf8' });
      expect(r.status).to.equal(2);
      expect(r.stderr).to.contain('/nonexistent.yaml');
    });
  });

  describe('HTTP skeleton and auth', () => {
    it('401 without a token, with an unknown token; Bearer and Token schemes both work', async () => {
      expect((await d.get('/keys', { token: null })).status).to.equal(401);
      const bad = await d.get('/keys', { token: 'nope' });
      expect(bad.status).to.equal(401);
      expect(bad.body.code).to.equal('Unauthenticated');
      expect(bad.body.requestId).to.equal(bad.headers.get('x-request-id'));
      const tok = await d.call('GET', '/v1/kms/nl-01/keys', undefined, { token: null, headers: { authorization: `Token ${stack.token()}` } });
      expect(tok.status).to.equal(200);
      expect(tok.body).to.be.an('array');
    });

    it('403 KmsNotEnabled for a disabled organisation, 404 for an unknown region, 404 masking across organisations', async () => {
      expect((await d.get('/keys', { org: 'org-off' })).body.code).to.equal('KmsNotEnabled');
      expect((await d.get('/keys', { region: 'xx-01' })).status).to.equal(404);
      const k = await d.createKey('masked', 'aes256-gcm96');
      expect((await d.get(`/keys/${k.identity}`, { org: 'org-other' })).status).to.equal(404);
      expect((await d.post(`/keys/${k.identity}/encrypt`, { plaintext: '' }, { org: 'org-other' })).status).to.equal(404);
    });

    it('role without the permission gets 403 Forbidden on a key it can read', async () => {
      const r = await d.post('/keys/masked/encrypt', { plaintext: 'aGk=' }, { token: stack.token('reader') });
      expect(r.status).to.equal(403);
      expect(r.body.code).to.equal('Forbidden');
    });

    it('echoes a client X-Request-Id and makes one otherwise', async () => {
      const r = await d.get('/keys', { headers: { 'x-request-id': 'my-req-1' } });
      expect(r.headers.get('x-request-id')).to.equal('my-req-1');
      const r2 = await d.get('/keys');
      expect(r2.headers.get('x-request-id')).to.match(/^[0-9a-f-]{36}$/);
    });

    it('413 PayloadTooLarge beyond limits.maxBodyBytes and 400 on malformed JSON, never 5xx', async () => {
      const big = await d.post('/keys/masked/encrypt', { plaintext: Buffer.alloc(4096).toString('base64') });
      expect(big.status).to.equal(413);
      expect(big.body.code).to.equal('PayloadTooLarge');
      const bad = await d.post('/keys/masked/encrypt', undefined, { raw: '{"plaintext":' });
      expect(bad.status).to.equal(400);
      expect(bad.body.code).to.equal('ValidationError');
      expect(bad.headers.get('content-type')).to.contain('application/json');
    });

    it('a principal added with kmsctl works at once against the running daemon', async () => {
      const cfg = path.join(stack.dir, 'kmsd-0.yaml');
      const r = spawnSync(process.execPath, [KMSCTL_BIN, 'principal', 'add', '--config', cfg, '--name', 'ops', '--org', ORG, '--role', 'crypto-user'], {
        env: stack.env,
        encoding: 'utf8',
      });
      expect(r.status, r.stderr).to.equal(0);
      const token = r.stdout.trim();
      expect(token).to.match(/^kmsd_/);
      const e = await d.post('/keys/masked/encrypt', { plaintext: 'aGk=' }, { token });
      expect(e.status).to.equal(200);
      const del = await d.del('/keys/masked', { token });
      expect(del.status).to.equal(403);
    });

    it('/metrics exposes request counts, latency and token operation latency', async () => {
      const r = await d.call('GET', '/metrics', undefined, { token: null, org: null });
      expect(r.status).to.equal(200);
      expect(r.body).to.contain('kmsd_http_requests_total{');
      expect(r.body).to.contain('kmsd_http_request_duration_seconds_bucket{');
      expect(r.body).to.match(/kmsd_token_operation_duration_seconds_count\{[^}]*op="encrypt"/);
      expect(r.body).to.contain('kmsd_event_loop_delay_max_seconds');
    });

    it('/openapi.json is generated from the request schemas', async () => {
      const r = await d.call('GET', '/openapi.json', undefined, { token: null, org: null });
      expect(r.body.openapi).to.equal('3.1.0');
      const enc = r.body.paths['/v1/kms/{region}/keys/{id}/encrypt'].post.requestBody.content['application/json'].schema;
      expect(Object.keys(enc.properties)).to.include.members(['plaintext', 'aad', 'batch', 'keyVersion']);
      expect(enc.additionalProperties).to.equal(false);
    });
  });

  describe('token layer and store', () => {
    it('keys stay usable across a restart (handles re-found by the start-up scan)', async () => {
      await d.createKey('survivor', 'aes256-gcm96');
      const e = await d.post('/keys/survivor/encrypt', { plaintext: 'aGVsbG8=' });
      await d.stop();
      d = await stack.start();
      const p = await d.post('/keys/survivor/decrypt', { ciphertext: e.body.ciphertext });
      expect(p.status).to.equal(200);
      expect(p.body.plaintext).to.equal('aGVsbG8=');
    });

    it('symmetric keys are used through session working copies: in the token, sensitive, capped, destroyed with the key', () => {
      stack.initToken('probe-token');
      const r = probeWorkingCopies(stack, 'probe-token');
      expect(r.afterFirst).to.deep.equal({ copies: 1, sessionObjectsA: 1, attrs: { token: false, sensitive: true, extractable: false } });
      expect(r.tokenObjectDecrypts, 'the copy is the same key as the token object').to.equal(true);
      expect(r.copyDecrypts, 'and the other way round').to.equal(true);
      expect(r.tamperedRejected).to.equal(true);
      // cap 2: using A, B, C, A evicted A then B; the evicted copies are destroyed, not leaked
      expect(r.afterCap).to.deep.equal({ copies: 2, sessionObjects: 2, sessionObjectsA: 1, allThreeEncrypt: true });
      expect(r.afterDestroy).to.deep.equal({ copies: 1, sessionObjectsA: 0, tokenObjectsA: 0 });
      expect(r.disabled).to.deep.equal({ copies: 0, sessionObjects: 0 });
      // a key the token refuses to copy is used directly, and dropping it from the cache never destroys it
      expect(r.notCopyable).to.deep.equal({ encrypts: true, copies: 0, sessionObjects: 0, tokenObjectsAfterForget: 1, encryptsAfterForget: true });
    });

    it('private signing keys are used through session working copies too (async path, signing threads, event loop)', () => {
      stack.initToken('probe-signing');
      const r = probeWorkingCopies(stack, 'probe-signing').signing;
      const copy = { sessionCopies: 1, attrs: { token: false, sensitive: true, extractable: false }, verifies: true };
      expect(r.async).to.deep.equal({ ed25519: copy, 'ecdsa-p256': copy });
      expect(r.threads).to.deep.equal({ ed25519: { sessionCopies: 1, verifies: true }, 'ecdsa-p256': { sessionCopies: 1, verifies: true } });
      // a process per core: EdDSA/ECDSA sign on the event loop, RSA never; many signatures
      // requested at once all sign on the loop, but in runs that let a timer in between
      const onLoop = { sessionCopies: 1, verifies: true, onLoop: true };
      expect(r.loop.keys).to.deep.equal({ ed25519: onLoop, 'ecdsa-p256': onLoop });
      expect(r.loop.rsaOnLoop).to.equal(false);
      expect(r.loop.budget.verify).to.equal(r.loop.budget.started);
      expect(r.loop.budget.onLoop).to.equal(r.loop.budget.started);
      expect(r.loop.budget.doneWhenTimerRan).to.be.within(1, r.loop.budget.started - 1);
      expect(r.loop.stillOnLoop).to.equal(true);
      expect(r.afterDestroy).to.equal(0);
    });

    it('migrations are versioned and re-running them applies nothing', async () => {
      const store = await SqliteStore.open(stack.dataDir);
      expect(await store.migrate()).to.equal(0);
      expect((await store.migrationVersions())[0]).to.equal(1);
      expect(await store.journalMode()).to.equal('wal');
      await store.close();
    });

    it('SIGTERM shuts down gracefully (exit code 0)', async () => {
      const extra = await stack.start();
      const code = await new Promise<number | null>((resolve) => {
        extra.proc.once('exit', (c) => resolve(c));
        extra.proc.kill('SIGTERM');
      });
      expect(code).to.equal(0);
    });
  });
});

describe('foundation: an unavailable token makes its region 503 and is retried', function () {
  this.timeout(120_000);
  let stack: TestStack;
  after(() => stack.cleanup());

  it('serves 503 RegionUnavailable, stays up, and picks the token up once it exists', async () => {
    stack = await TestStack.create({ name: 'token-late', tokens: [] });
    const d = await stack.start();
    const r = await d.get('/keys');
    expect(r.status).to.equal(503);
    expect(r.body.code).to.equal('RegionUnavailable');
    // MongoDB may still be connecting right after start; the region stays down whatever happens
    const ready = await waitFor('readiness naming only the region', async () => {
      const x = await d.call('GET', '/readyz', undefined, { token: null, org: null });
      return x.body.down.length === 1 ? x : undefined;
    });
    expect(ready.status).to.equal(503);
    expect(ready.body.down).to.deep.equal(['region:nl-01']);
    stack.initToken('kmsd-nl-01');
    await waitFor('region to come back', async () => (await d.get('/keys')).status === 200, 30_000, 500);
    expect(d.alive).to.equal(true);
    const k = await d.createKey('late', 'aes128-gcm96');
    expect(k.latestVersion).to.equal(1);
  });
});

describe('foundation: readiness follows MongoDB, crypto does not need it', function () {
  this.timeout(120_000);
  let stack: TestStack;
  let mongo: MongoServer;
  after(async () => {
    await stack.cleanup();
    await mongo.stop();
  });

  it('reports degraded while MongoDB is stopped and recovers by itself', async () => {
    mongo = await MongoServer.start('readiness');
    stack = await TestStack.create({ name: 'readiness', mongodbUri: mongo.uri });
    const d = await stack.start();
    const ready = () => d.call('GET', '/readyz', undefined, { token: null, org: null });
    await waitFor('ready', async () => (await ready()).status === 200);
    await d.createKey('m', 'aes256-gcm96');
    await mongo.stop();
    const down = await waitFor('degraded', async () => {
      const r = await ready();
      return r.status === 503 ? r : undefined;
    });
    expect(down.body.down).to.deep.equal(['mongodb']);
    const e = await d.post('/keys/m/encrypt', { plaintext: 'aGk=' });
    expect(e.status).to.equal(200);
    await mongo.resume();
    await waitFor('ready again', async () => (await ready()).status === 200, 30_000, 500);
  });
});
