import { expect } from 'chai';
import { CKK, CKO, keyObjects, ownMongoUri, pkcs11ToolObjects, tokenObjects } from './keys-token.js';
import { ORG, TestStack, waitFor, type Daemon, type Reply } from '../helpers/stack.js';

const b64 = (s: string) => Buffer.from(s).toString('base64');
const RFC3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;
const DAY = 86_400_000;


function expectError(r: Reply, status: number, code: string, mentions?: string | RegExp): void {
  expect(r.status, JSON.stringify(r.body)).to.equal(status);
  expect(r.headers.get('content-type')).to.match(/^application\/json/);
  expect(r.body.code, JSON.stringify(r.body)).to.equal(code);
  expect(r.body.message).to.be.a('string').and.not.equal('');
  expect(r.body.requestId).to.equal(r.headers.get('x-request-id'));
  if (typeof mentions === 'string') expect(r.body.message).to.include(mentions);
  else if (mentions) expect(r.body.message).to.match(mentions);
}

/** What each key type must look like on the token. */
const EXPECTED: Record<string, { secret?: { keyType: number; bytes: number }; pair?: { keyType: number; ecParams?: string; bits?: number } }> = {
  'aes256-gcm96': { secret: { keyType: CKK.AES, bytes: 32 } },
  'aes128-gcm96': { secret: { keyType: CKK.AES, bytes: 16 } },
  hmac: { secret: { keyType: CKK.GENERIC_SECRET, bytes: 32 } },
  'hmac-sha256': { secret: { keyType: CKK.GENERIC_SECRET, bytes: 32 } },
  'hmac-sha384': { secret: { keyType: CKK.GENERIC_SECRET, bytes: 48 } },
  'hmac-sha512': { secret: { keyType: CKK.GENERIC_SECRET, bytes: 64 } },
  ed25519: { pair: { keyType: CKK.EC_EDWARDS } },
  'ecdsa-p256': { pair: { keyType: CKK.EC, ecParams: '06082a8648ce3d030107' } },
  'ecdsa-p384': { pair: { keyType: CKK.EC, ecParams: '06052b81040022' } },
  'ecdsa-p521': { pair: { keyType: CKK.EC, ecParams: '06052b81040023' } },
  'rsa-2048': { pair: { keyType: CKK.RSA, bits: 2048 } },
  'rsa-3072': { pair: { keyType: CKK.RSA, bits: 3072 } },
  'rsa-4096': { pair: { keyType: CKK.RSA, bits: 4096 } },
};

/** Every field of the key resource with the JSON type the contract and the Go client declare. */
function expectKeyResource(k: any): void {
  for (const f of ['identity', 'name', 'slug', 'description', 'projectId', 'keyType', 'status', 'region', 'rotationStatus'])
    expect(k[f], f).to.be.a('string');
  for (const f of ['exportAllowed', 'imported', 'allowRotation', 'keyRotationEnabled']) expect(k[f], f).to.be.a('boolean');
  for (const f of ['latestVersion', 'minDecryptionVersion', 'objectVersion']) expect(Number.isInteger(k[f]), f).to.equal(true);
  expect(k.identity).to.match(/^kms-/);
  expect(k.labels).to.be.an('object').and.not.an('array');
  expect(k.annotations).to.be.an('object').and.not.an('array');
  expect(k.createdAt).to.match(RFC3339);
  expect(k.updatedAt).to.match(RFC3339);
  expect(['active', 'disabled', 'pending_deletion']).to.include(k.status);
  expect(['enabled', 'disabled', 'suspended']).to.include(k.rotationStatus);
  expect(k.versions).to.be.an('array').with.length.greaterThan(0);
  for (const v of k.versions) {
    expect(Number.isInteger(v.version)).to.equal(true);
    expect(['enabled', 'disabled']).to.include(v.status);
    expect(v.createdAt).to.match(RFC3339);
  }
  expect(k.versions.map((v: any) => v.version)).to.deep.equal(k.versions.map((_: unknown, i: number) => i + 1));
  expect(k.latestVersion).to.equal(k.versions.length);
  expect(k.organisation).to.be.an('object');
  for (const f of ['identity', 'name', 'slug']) expect(k.organisation[f]).to.be.a('string');
  for (const f of ['lastRotationDate', 'nextRotationDate', 'deletionDate'])
    if (k[f] !== null) expect(k[f], f).to.be.a('string').and.match(RFC3339);
  if ('rotationPeriodInDays' in k) expect(Number.isInteger(k.rotationPeriodInDays)).to.equal(true);
  else expect(k.keyRotationEnabled).to.equal(false);
  if (k.status === 'pending_deletion') expect(k.deletionDate).to.match(RFC3339);
  else expect(k.deletionDate).to.equal(null);
}

describe('keys: key management over HTTP on a real SoftHSM2 token', function () {
  this.timeout(120_000);
  let stack: TestStack;
  let d: Daemon;

  before(async () => {
    stack = await TestStack.create({ name: 'keys', mongodbUri: ownMongoUri('keys') });
    d = await stack.start();
  });
  after(() => stack.cleanup());

  describe('create: every key type, checked on the token', () => {
    const created: Record<string, any> = {};

    before(async () => {
      await Promise.all(
        Object.keys(EXPECTED).map(async (t) => {
          created[t] = await d.createKey(`type ${t}`, t, { description: `a ${t} key`, labels: { type: t.slice(0, 10) } });
        }),
      );
    });

    for (const [type, want] of Object.entries(EXPECTED)) {
      it(`creates ${type}: 201 with the full key resource and a sensitive, non-extractable ${want.secret ? 'secret key' : 'key pair'} of the right CKA_KEY_TYPE`, () => {
        const k = created[type];
        expectKeyResource(k);
        expect(k).to.include({
          name: `type ${type}`,
          slug: `type-${type}`,
          keyType: type,
          status: 'active',
          description: `a ${type} key`,
          exportAllowed: false,
          imported: false,
          allowRotation: true,
          keyRotationEnabled: false,
          latestVersion: 1,
          minDecryptionVersion: 1,
          objectVersion: 1,
          region: 'nl-01',
          projectId: '',
          rotationStatus: 'disabled',
          nextRotationDate: null,
          deletionDate: null,
        });
        expect(k.labels).to.deep.equal({ type: type.slice(0, 10) });
        expect(k.organisation).to.include({ identity: ORG, name: ORG, slug: ORG });
        expect(k).not.to.have.property('rotationPeriodInDays');

        const objs = keyObjects(stack, k.identity);
        if (want.secret) {
          expect(objs, 'one secret key object').to.have.length(1);
          const o = objs[0]!;
          expect(o).to.include({ cls: CKO.SECRET, keyType: want.secret.keyType, valueLen: want.secret.bytes });
          expect(o).to.include({ token: true, private: true, sensitive: true, alwaysSensitive: true, extractable: false, neverExtractable: true });
        } else {
          expect(objs, 'a private and a public object').to.have.length(2);
          const priv = objs.find((o) => o.cls === CKO.PRIVATE)!;
          const pub = objs.find((o) => o.cls === CKO.PUBLIC)!;
          expect(priv, 'private key object').to.not.equal(undefined);
          expect(pub, 'public key object').to.not.equal(undefined);
          expect(priv.id).to.equal(pub.id);
          expect(priv).to.include({ keyType: want.pair!.keyType, token: true, private: true, sensitive: true, extractable: false, neverExtractable: true });
          expect(pub).to.include({ keyType: want.pair!.keyType, token: true, private: false });
          if (want.pair!.ecParams) expect(pub.ecParams).to.equal(want.pair!.ecParams);
          if (want.pair!.bits) expect(pub.modulusBits).to.equal(want.pair!.bits);
        }
      });
    }

    it('pkcs11-tool (OpenSC) agrees: private/secret parts are sensitive and never extractable, and invisible without login', () => {
      const logged = pkcs11ToolObjects(stack, true);
      const anon = pkcs11ToolObjects(stack, false);
      for (const type of ['aes256-gcm96', 'hmac-sha384', 'ecdsa-p256', 'rsa-2048']) {
        const id = created[type].identity;
        const mine = logged.filter((o) => o.id.startsWith(`kmsd/k/${id}/`));
        const secretOrPrivate = mine.filter((o) => /^(Private|Secret)/.test(o.header));
        expect(secretOrPrivate, type).to.have.length(1);
        expect(secretOrPrivate[0]!.access).to.include.members(['sensitive', 'always sensitive', 'never extractable']);
        expect(secretOrPrivate[0]!.access).not.to.include('extractable');
        // CKA_PRIVATE=true: a session that is not logged in does not see them at all
        expect(anon.filter((o) => o.id.startsWith(`kmsd/k/${id}/`) && /^(Private|Secret)/.test(o.header)), type).to.have.length(0);
      }
      const aes = logged.find((o) => o.id.startsWith(`kmsd/k/${created['aes256-gcm96'].identity}/`))!;
      expect(aes.header).to.match(/^Secret Key Object; AES length 32/);
    });

    it('exportAllowed: true makes CKA_EXTRACTABLE=true but keeps CKA_SENSITIVE=true', async () => {
      const k = await d.createKey('exportable one', 'aes256-gcm96', { exportAllowed: true });
      expect(k.exportAllowed).to.equal(true);
      const [o] = keyObjects(stack, k.identity);
      expect(o).to.include({ cls: CKO.SECRET, sensitive: true, extractable: true, private: true, token: true });
    });

    it('chacha20-poly1305 → 400 UnsupportedOperation naming CKM_CHACHA20_POLY1305 (SoftHSM2 lacks it), and nothing lands on the token', async () => {
      const before = tokenObjects(stack).length;
      const r = await d.post('/keys', { name: 'chacha', keyType: 'chacha20-poly1305' });
      expectError(r, 400, 'UnsupportedOperation', 'CKM_CHACHA20_POLY1305');
      expect(tokenObjects(stack).length).to.equal(before);
      expect((await d.get('/keys/chacha')).status).to.equal(404);
    });

    it('records the creation in the audit trail as kms.create with the key identity', async () => {
      const id = created['ed25519'].identity;
      const r = await d.get(`/audit?keyIdentity=${id}&action=kms.create`);
      expect(r.status).to.equal(200);
      expect(r.body.events).to.have.length(1);
      expect(r.body.events[0]).to.include({ action: 'kms.create', keyIdentity: id, outcome: 'success', principal: 'admin', organisationIdentity: ORG });
    });
  });

  describe('create: the key resource', () => {
    it('derives the slug: lower-case, runs outside [a-z0-9] become "-", trimmed', async () => {
      const k = await d.createKey('  My Secrets__Key v2!! ', 'aes128-gcm96');
      expect(k.slug).to.equal('my-secrets-key-v2');
      expect(k.name).to.equal('  My Secrets__Key v2!! ');
      expect((await d.get('/keys/my-secrets-key-v2')).body.identity).to.equal(k.identity);
    });

    it('with rotation on: rotationPeriodInDays, rotationStatus enabled, nextRotationDate = lastRotationDate + period', async () => {
      const k = await d.createKey('rotating', 'aes256-gcm96', {
        keyRotationEnabled: true,
        rotationPeriodInDays: 90,
        annotations: { owner: 'team-a' },
      });
      expectKeyResource(k);
      expect(k).to.include({ keyRotationEnabled: true, rotationPeriodInDays: 90, rotationStatus: 'enabled' });
      expect(k.annotations).to.deep.equal({ owner: 'team-a' });
      expect(Date.parse(k.nextRotationDate) - Date.parse(k.lastRotationDate)).to.equal(90 * DAY);
    });

    it('accepts the boundary periods 1 and 3650, and a period without rotation enabled', async () => {
      const a = await d.createKey('period one', 'hmac', { keyRotationEnabled: true, rotationPeriodInDays: 1 });
      const b = await d.createKey('period max', 'hmac', { keyRotationEnabled: true, rotationPeriodInDays: 3650 });
      const c = await d.createKey('period off', 'hmac', { keyRotationEnabled: false, rotationPeriodInDays: 30 });
      expect(a.rotationPeriodInDays).to.equal(1);
      expect(b.rotationPeriodInDays).to.equal(3650);
      expect(c).to.include({ keyRotationEnabled: false, rotationStatus: 'disabled', nextRotationDate: null });
    });

    it('absent booleans are false: a create with only name and keyType', async () => {
      const k = await d.createKey('minimal', 'aes256-gcm96');
      expect(k).to.include({ exportAllowed: false, keyRotationEnabled: false, imported: false, description: '' });
      expect(k.labels).to.deep.equal({});
      expect(k.annotations).to.deep.equal({});
    });

    it('the name "default" (slug of the organisation key) → 409 Conflict', async () => {
      expectError(await d.post('/keys', { name: 'Default', keyType: 'aes256-gcm96' }), 409, 'Conflict', 'default');
    });

    it('a duplicate slug in the same scope → 409 Conflict; other project or organisation → allowed', async () => {
      await d.createKey('dup name', 'aes256-gcm96');
      expectError(await d.post('/keys', { name: 'DUP NAME', keyType: 'hmac' }), 409, 'Conflict', 'dup-name');
      const p = await d.post('/keys', { name: 'dup name', keyType: 'aes256-gcm96' }, { project: 'proj-a' });
      expect(p.status).to.equal(201);
      expect(p.body.projectId).to.equal('proj-a');
      const o = await d.post('/keys', { name: 'dup name', keyType: 'aes256-gcm96' }, { org: 'org-other' });
      expect(o.status).to.equal(201);
      expect(o.body.organisation.identity).to.equal('org-other');
    });
  });

  describe('create: validation (400 ValidationError naming the field, nothing on the token)', () => {
    const cases: [string, unknown, string][] = [
      ['rotationPeriodInDays 0', { name: 'v', keyType: 'hmac', keyRotationEnabled: true, rotationPeriodInDays: 0 }, 'rotationPeriodInDays'],
      ['rotationPeriodInDays 3651', { name: 'v', keyType: 'hmac', keyRotationEnabled: true, rotationPeriodInDays: 3651 }, 'rotationPeriodInDays'],
      ['rotationPeriodInDays -5', { name: 'v', keyType: 'hmac', keyRotationEnabled: true, rotationPeriodInDays: -5 }, 'rotationPeriodInDays'],
      ['rotationPeriodInDays 1.5', { name: 'v', keyType: 'hmac', keyRotationEnabled: true, rotationPeriodInDays: 1.5 }, 'rotationPeriodInDays'],
      ['rotationPeriodInDays as a string', { name: 'v', keyType: 'hmac', keyRotationEnabled: true, rotationPeriodInDays: '30' }, 'rotationPeriodInDays'],
      ['rotationPeriodInDays null', { name: 'v', keyType: 'hmac', keyRotationEnabled: true, rotationPeriodInDays: null }, 'rotationPeriodInDays'],
      ['rotation enabled without rotationPeriodInDays', { name: 'v', keyType: 'hmac', keyRotationEnabled: true }, 'rotationPeriodInDays'],
      ['rotationPeriodInDays out of range even with rotation off', { name: 'v', keyType: 'hmac', rotationPeriodInDays: 4000 }, 'rotationPeriodInDays'],
      ['unknown keyType', { name: 'v', keyType: 'aes512-gcm' }, 'keyType'],
      ['keyType in another case', { name: 'v', keyType: 'AES256-GCM96' }, 'keyType'],
      ['keyType missing', { name: 'v' }, 'keyType'],
      ['keyType a number', { name: 'v', keyType: 7 }, 'keyType'],
      ['name missing', { keyType: 'hmac' }, 'name'],
      ['name empty', { name: '', keyType: 'hmac' }, 'name'],
      ['name without letters or digits', { name: '-- !! --', keyType: 'hmac' }, 'name'],
      ['name a number', { name: 42, keyType: 'hmac' }, 'name'],
      ['name too long', { name: 'x'.repeat(256), keyType: 'hmac' }, 'name'],
      ['description a number', { name: 'v', keyType: 'hmac', description: 5 }, 'description'],
      ['labels a string', { name: 'v', keyType: 'hmac', labels: 'env=prod' }, 'labels'],
      ['labels with a number value', { name: 'v', keyType: 'hmac', labels: { env: 1 } }, 'labels'],
      ['labels an array', { name: 'v', keyType: 'hmac', labels: ['a'] }, 'labels'],
      ['annotations with a nested object', { name: 'v', keyType: 'hmac', annotations: { a: { b: 'c' } } }, 'annotations'],
      ['exportAllowed a string', { name: 'v', keyType: 'hmac', exportAllowed: 'yes' }, 'exportAllowed'],
      ['keyRotationEnabled a string', { name: 'v', keyType: 'hmac', keyRotationEnabled: 'true', rotationPeriodInDays: 30 }, 'keyRotationEnabled'],
      ['unknown field', { name: 'v', keyType: 'hmac', colour: 'blue' }, 'colour'],
      ['unknown field status', { name: 'v', keyType: 'hmac', status: 'disabled' }, 'status'],
      ['hashFunction without importKeyMaterial', { name: 'v', keyType: 'aes256-gcm96', hashFunction: 'SHA1' }, 'hashFunction'],
      ['importKeyMaterial not base64', { name: 'v', keyType: 'aes256-gcm96', importKeyMaterial: 'not base64!' }, 'importKeyMaterial'],
    ];
    let objectsBefore: number;
    before(() => {
      objectsBefore = tokenObjects(stack).length;
    });
    for (const [what, body, field] of cases)
      it(`${what} → 400 ValidationError naming ${field}`, async () => {
        expectError(await d.post('/keys', body), 400, 'ValidationError', field);
      });

    it('bodies that are not a JSON object → 400 ValidationError', async () => {
      for (const raw of ['[]', '"key"', '42', 'true', '[{"name":"v","keyType":"hmac"}]'])
        expectError(await d.post('/keys', undefined, { raw }), 400, 'ValidationError');
      expectError(await d.post('/keys', undefined, { raw: '{"name": "v", "keyType": ' }), 400, 'ValidationError', /malformed|JSON/i);
      expectError(await d.post('/keys', undefined, { raw: '' }), 400, 'ValidationError');
    });

    it('none of the rejected creates left an object on the token or a key behind', async () => {
      expect(tokenObjects(stack).length).to.equal(objectsBefore);
      expect((await d.get('/keys?slug=v')).body).to.deep.equal([]);
    });
  });

  describe('create: 20 simultaneous creates of one name', () => {
    it('exactly one 201, nineteen 409 Conflict, and no orphan object on the token', async () => {
      const before = tokenObjects(stack);
      const replies = await Promise.all(Array.from({ length: 20 }, () => d.post('/keys', { name: 'Race Key', keyType: 'ecdsa-p256' })));
      const won = replies.filter((r) => r.status === 201);
      const lost = replies.filter((r) => r.status !== 201);
      expect(won, 'one winner').to.have.length(1);
      expect(lost).to.have.length(19);
      for (const r of lost) expectError(r, 409, 'Conflict');
      const after = tokenObjects(stack);
      expect(after.length - before.length, 'exactly the winner\u2019s private + public object').to.equal(2);
      const added = after.filter((o) => !before.some((b) => b.id === o.id && b.cls === o.cls));
      expect(added.every((o) => o.id.startsWith(`kmsd/k/${won[0]!.body.identity}/`))).to.equal(true);
      const list = await d.get('/keys?slug=race-key');
      expect(list.body).to.have.length(1);
    });

    it('also across two daemons sharing the data dir and token', async () => {
      const d2 = await stack.start();
      try {
        const before = tokenObjects(stack).length;
        const replies = await Promise.all(
          Array.from({ length: 20 }, (_, i) => (i % 2 ? d : d2).post('/keys', { name: 'race two', keyType: 'aes256-gcm96' })),
        );
        expect(replies.filter((r) => r.status === 201)).to.have.length(1);
        for (const r of replies.filter((x) => x.status !== 201)) expectError(r, 409, 'Conflict');
        expect(tokenObjects(stack).length - before).to.equal(1);
      } finally {
        await d2.stop();
      }
    });
  });

  describe('list, get, summary', () => {
    let prod: any, dev: any, proj: any;
    before(async () => {
      prod = await d.createKey('list prod', 'aes256-gcm96', { labels: { env: 'prod', team: 'a' } });
      dev = await d.createKey('list dev', 'hmac', { labels: { env: 'dev', team: 'a' } });
      proj = await d.createKey('list proj', 'aes256-gcm96', { labels: { env: 'prod' } }, { project: 'proj-list' });
      await d.post(`/keys/${dev.identity}/disable`);
    });

    it('GET /keys returns a JSON array of key resources of the caller\u2019s scope (default key included)', async () => {
      const r = await d.get('/keys');
      expect(r.status).to.equal(200);
      expect(r.body).to.be.an('array');
      for (const k of r.body) expectKeyResource(k);
      const ids = r.body.map((k: any) => k.identity);
      expect(ids).to.include.members([prod.identity, dev.identity]);
      expect(ids).not.to.include(proj.identity);
      expect(r.body.map((k: any) => k.slug)).to.include('default');
      expect(r.body.every((k: any) => k.projectId === '' && k.organisation.identity === ORG)).to.equal(true);
    });

    it('filters by identity, name, slug and status', async () => {
      expect((await d.get(`/keys?identity=${prod.identity}`)).body.map((k: any) => k.identity)).to.deep.equal([prod.identity]);
      expect((await d.get(`/keys?name=${encodeURIComponent('list dev')}`)).body.map((k: any) => k.identity)).to.deep.equal([dev.identity]);
      expect((await d.get('/keys?slug=list-prod')).body.map((k: any) => k.identity)).to.deep.equal([prod.identity]);
      const disabled = (await d.get('/keys?status=disabled')).body;
      expect(disabled.map((k: any) => k.identity)).to.include(dev.identity);
      expect(disabled.every((k: any) => k.status === 'disabled')).to.equal(true);
      expect((await d.get('/keys?slug=nothing-like-this')).body).to.deep.equal([]);
      expect((await d.get('/keys?region=nl-01&slug=list-prod')).body).to.have.length(1);
    });

    it('filters by matchLabels[k]=v (all must match)', async () => {
      const prodKeys = (await d.get('/keys?matchLabels[env]=prod')).body.map((k: any) => k.identity);
      expect(prodKeys).to.deep.equal([prod.identity]);
      const teamA = (await d.get('/keys?matchLabels[team]=a')).body.map((k: any) => k.identity);
      expect(teamA).to.have.members([prod.identity, dev.identity]);
      const both = await d.get(`/keys?${encodeURIComponent('matchLabels[team]')}=a&${encodeURIComponent('matchLabels[env]')}=dev`);
      expect(both.body.map((k: any) => k.identity)).to.deep.equal([dev.identity]);
      expect((await d.get('/keys?matchLabels[env]=staging')).body).to.deep.equal([]);
      const inProject = await d.get('/keys?matchLabels[env]=prod', { project: 'proj-list' });
      expect(inProject.body.map((k: any) => k.identity)).to.deep.equal([proj.identity]);
    });

    it('an unknown status filter → 400 ValidationError naming status', async () => {
      expectError(await d.get('/keys?status=gone'), 400, 'ValidationError', 'status');
    });

    it('GET /keys/{identity} and /keys/{slug} return the same key; unknown → 404 NotFound', async () => {
      const a = await d.get(`/keys/${prod.identity}`);
      const b = await d.get('/keys/list-prod');
      expect(a.status).to.equal(200);
      expect(b.body).to.deep.equal(a.body);
      expectKeyResource(a.body);
      expectError(await d.get('/keys/kms-00000000000000000000'), 404, 'NotFound');
      expectError(await d.get('/keys/no-such-slug'), 404, 'NotFound');
      // a project key is only seen with its project header, an org key not with one
      expectError(await d.get(`/keys/${proj.identity}`), 404, 'NotFound');
      expect((await d.get(`/keys/${proj.identity}`, { project: 'proj-list' })).status).to.equal(200);
      expectError(await d.get(`/keys/${prod.identity}`, { project: 'proj-list' }), 404, 'NotFound');
    });

    it('summary counts the organisation\u2019s keys per region (organisation and project scoped)', async () => {
      // org-other is only touched here and in the duplicate test (one key): count from a clean baseline
      const base = (await d.call('GET', '/v1/kms/summary', undefined, { org: 'org-other' })).body.regions[0];
      await d.createKey('sum a', 'aes256-gcm96', {}, { org: 'org-other' });
      const b = await d.createKey('sum b', 'hmac', {}, { org: 'org-other' });
      const c = await d.createKey('sum c', 'aes256-gcm96', {}, { org: 'org-other', project: 'p1' });
      await d.post(`/keys/${b.identity}/disable`, undefined, { org: 'org-other' });
      await d.del(`/keys/${c.identity}`, { org: 'org-other', project: 'p1' });
      const r = await d.call('GET', '/v1/kms/summary', undefined, { org: 'org-other' });
      expect(r.status).to.equal(200);
      expect(r.body.featureEnabled).to.equal(true);
      expect(r.body.regions).to.have.length(1);
      const reg = r.body.regions[0];
      expect(reg).to.include({ identity: 'nl-01', name: 'nl-01', slug: 'nl-01', kmsAvailable: true });
      expect(reg.totalKeys).to.equal(base.totalKeys + 3);
      expect(reg.activeKeys).to.equal(base.activeKeys + 1);
      expect(reg.disabledKeys).to.equal(base.disabledKeys + 1);
      expect(reg.pendingDeletionKeys).to.equal(base.pendingDeletionKeys + 1);
      expect(reg.totalKeys).to.equal(reg.activeKeys + reg.disabledKeys + reg.pendingDeletionKeys);
      // base: the default key and the duplicate-test key, both active
      expect(base.activeKeys).to.be.at.least(1);
    });

    it('summary for an organisation with KMS off → 200 featureEnabled false', async () => {
      const r = await d.call('GET', '/v1/kms/summary', undefined, { org: 'org-off' });
      expect(r.status).to.equal(200);
      expect(r.body.featureEnabled).to.equal(false);
    });
  });

  describe('lifecycle', () => {
    const enc = (id: string, o = {}) => d.post(`/keys/${id}/encrypt`, { plaintext: b64('lifecycle') }, o);

    it('disable → disabled (objectVersion +1, rotation suspended), crypto → 409 KeyStateConflict, enable → active again', async () => {
      const k = await d.createKey('life one', 'aes256-gcm96', { keyRotationEnabled: true, rotationPeriodInDays: 30 });
      const ct = (await enc(k.identity)).body.ciphertext;
      const dis = await d.post(`/keys/${k.identity}/disable`);
      expect(dis.status).to.equal(200);
      expectKeyResource(dis.body);
      expect(dis.body).to.include({ status: 'disabled', rotationStatus: 'suspended', objectVersion: 2, keyRotationEnabled: true, rotationPeriodInDays: 30 });
      expectError(await enc(k.identity), 409, 'KeyStateConflict');
      expectError(await d.post(`/keys/${k.identity}/decrypt`, { ciphertext: ct }), 409, 'KeyStateConflict');
      expectError(await d.post(`/keys/${k.identity}/generate-data-key`, {}), 409, 'KeyStateConflict');
      expectError(await d.post(`/keys/${k.identity}/rotate`), 409, 'KeyStateConflict');
      const en = await d.post(`/keys/${k.identity}/enable`);
      expect(en.body).to.include({ status: 'active', rotationStatus: 'enabled', objectVersion: 3 });
      const p = await d.post(`/keys/${k.identity}/decrypt`, { ciphertext: ct });
      expect(Buffer.from(p.body.plaintext, 'base64').toString()).to.equal('lifecycle');
    });

    it('disable/enable need no body and no Content-Type and are idempotent in effect', async () => {
      const k = await d.createKey('life idem', 'hmac');
      const r1 = await d.call('POST', `/v1/kms/nl-01/keys/${k.identity}/disable`);
      const r2 = await d.call('POST', `/v1/kms/nl-01/keys/${k.identity}/disable`);
      expect([r1.status, r2.status]).to.deep.equal([200, 200]);
      expect(r2.body.status).to.equal('disabled');
      const r3 = await d.call('POST', `/v1/kms/nl-01/keys/${k.identity}/enable`);
      expect(r3.body.status).to.equal('active');
    });

    it('DELETE schedules deletion with the default 30-day window; crypto, enable, disable, re-delete → 409', async () => {
      const k = await d.createKey('life del', 'aes256-gcm96');
      const r = await d.call('DELETE', `/v1/kms/nl-01/keys/${k.identity}`);
      expect(r.status).to.equal(200);
      expectKeyResource(r.body);
      expect(r.body.status).to.equal('pending_deletion');
      expect(Math.abs(Date.parse(r.body.deletionDate) - Date.parse(r.body.updatedAt) - 30 * DAY)).to.be.below(1000);
      expectError(await enc(k.identity), 409, 'KeyStateConflict');
      expectError(await d.post(`/keys/${k.identity}/enable`), 409, 'KeyStateConflict');
      expectError(await d.post(`/keys/${k.identity}/disable`), 409, 'KeyStateConflict');
      expectError(await d.del(`/keys/${k.identity}`), 409, 'KeyStateConflict');
      expectError(await d.post(`/keys/${k.identity}/rotate`), 409, 'KeyStateConflict');
      // still readable and listed while pending
      expect((await d.get(`/keys/${k.identity}`)).body.status).to.equal('pending_deletion');
      expect((await d.get('/keys?status=pending_deletion')).body.map((x: any) => x.identity)).to.include(k.identity);
    });

    it('pendingWindowInDays 7 and 30 are accepted; 6, 31, 7.5, -7, 1e9, "abc" → 400 ValidationError naming it', async () => {
      const k = await d.createKey('life window', 'aes256-gcm96');
      for (const bad of ['6', '31', '7.5', 'abc', '-7', '1e9'])
        expectError(await d.del(`/keys/${k.identity}?pendingWindowInDays=${bad}`), 400, 'ValidationError', 'pendingWindowInDays');
      expect((await d.get(`/keys/${k.identity}`)).body.status).to.equal('active');
      const r = await d.del(`/keys/${k.identity}?pendingWindowInDays=7`);
      expect(r.status).to.equal(200);
      expect(Math.abs(Date.parse(r.body.deletionDate) - Date.parse(r.body.updatedAt) - 7 * DAY)).to.be.below(1000);
      await d.post(`/keys/${k.identity}/cancel-deletion`);
      const r30 = await d.del(`/keys/${k.identity}?pendingWindowInDays=30`);
      expect(Math.abs(Date.parse(r30.body.deletionDate) - Date.parse(r30.body.updatedAt) - 30 * DAY)).to.be.below(1000);
    });

    it('cancel-deletion (DELETE and POST) → active, deletionDate null; cancelling an active key → 409', async () => {
      const k = await d.createKey('life cancel', 'aes256-gcm96');
      await d.del(`/keys/${k.identity}`);
      const c1 = await d.call('DELETE', `/v1/kms/nl-01/keys/${k.identity}/cancel-deletion`);
      expect(c1.status).to.equal(200);
      expect(c1.body).to.include({ status: 'active', deletionDate: null });
      expect((await enc(k.identity)).status).to.equal(200);
      expectError(await d.post(`/keys/${k.identity}/cancel-deletion`), 409, 'KeyStateConflict');
      await d.del(`/keys/${k.identity}?pendingWindowInDays=10`);
      const c2 = await d.call('POST', `/v1/kms/nl-01/keys/${k.identity}/cancel-deletion`);
      expect(c2.status).to.equal(200);
      expect(c2.body).to.include({ status: 'active', deletionDate: null });
    });

    it('a key disabled before deletion is active again after cancel-deletion', async () => {
      const k = await d.createKey('life disabled del', 'hmac');
      await d.post(`/keys/${k.identity}/disable`);
      const del = await d.del(`/keys/${k.identity}`);
      expect(del.body.status).to.equal('pending_deletion');
      const c = await d.post(`/keys/${k.identity}/cancel-deletion`);
      expect(c.body.status).to.equal('active');
      expect((await d.post(`/keys/${k.identity}/hmac`, { input: b64('x') })).status).to.equal(200);
    });

    it('objectVersion goes up by one on every change', async () => {
      const k = await d.createKey('life objver', 'aes256-gcm96');
      const seen = [k.objectVersion];
      seen.push((await d.post(`/keys/${k.identity}/rotate`)).body.objectVersion);
      seen.push((await d.patch(`/keys/${k.identity}/rotation`, { keyRotationEnabled: true, rotationPeriodInDays: 10 })).body.objectVersion);
      seen.push((await d.post(`/keys/${k.identity}/disable`)).body.objectVersion);
      seen.push((await d.post(`/keys/${k.identity}/enable`)).body.objectVersion);
      seen.push((await d.patch(`/keys/${k.identity}`, { minDecryptionVersion: 2 })).body.objectVersion);
      seen.push((await d.del(`/keys/${k.identity}`)).body.objectVersion);
      seen.push((await d.post(`/keys/${k.identity}/cancel-deletion`)).body.objectVersion);
      expect(seen).to.deep.equal([1, 2, 3, 4, 5, 6, 7, 8]);
    });
  });

  describe('PATCH /keys/{id}: minDecryptionVersion only', () => {
    let k: any;
    before(async () => {
      k = await d.createKey('patch min', 'aes256-gcm96');
      await d.post(`/keys/${k.identity}/rotate`);
      await d.post(`/keys/${k.identity}/rotate`);
    });

    it('sets minDecryptionVersion within 1..latestVersion', async () => {
      const r = await d.patch(`/keys/${k.identity}`, { minDecryptionVersion: 3 });
      expect(r.status).to.equal(200);
      expect(r.body).to.include({ minDecryptionVersion: 3, latestVersion: 3 });
      const back = await d.patch(`/keys/${k.identity}`, { minDecryptionVersion: 1 });
      expect(back.body.minDecryptionVersion).to.equal(1);
    });

    const bad: [string, unknown, string][] = [
      ['0', { minDecryptionVersion: 0 }, 'minDecryptionVersion'],
      ['above latestVersion', { minDecryptionVersion: 4 }, 'minDecryptionVersion'],
      ['a string', { minDecryptionVersion: '2' }, 'minDecryptionVersion'],
      ['a fraction', { minDecryptionVersion: 1.5 }, 'minDecryptionVersion'],
      ['null', { minDecryptionVersion: null }, 'minDecryptionVersion'],
      ['missing', {}, 'minDecryptionVersion'],
      ['with name', { minDecryptionVersion: 1, name: 'renamed' }, 'name'],
      ['description', { description: 'changed' }, 'description'],
      ['labels', { labels: { a: 'b' } }, 'labels'],
      ['annotations', { annotations: { a: 'b' } }, 'annotations'],
      ['exportAllowed', { exportAllowed: true }, 'exportAllowed'],
      ['keyType', { keyType: 'hmac' }, 'keyType'],
    ];
    for (const [what, body, field] of bad)
      it(`${what} → 400 ValidationError naming ${field}`, async () => {
        expectError(await d.patch(`/keys/${k.identity}`, body), 400, 'ValidationError', field);
      });

    it('the rejected patches changed nothing', async () => {
      const r = await d.get(`/keys/${k.identity}`);
      expect(r.body).to.include({ name: 'patch min', description: '', minDecryptionVersion: 1, keyType: 'aes256-gcm96', exportAllowed: false });
      expect(r.body.labels).to.deep.equal({});
    });
  });

  describe('the default organisation key', () => {
    it('exists in the region for every KMS-enabled organisation, aes256-gcm96 with 365-day platform rotation', async () => {
      for (const org of [ORG, 'org-other']) {
        const r = await d.get('/keys/default', { org });
        expect(r.status, org).to.equal(200);
        expectKeyResource(r.body);
        expect(r.body).to.include({ slug: 'default', keyType: 'aes256-gcm96', status: 'active', keyRotationEnabled: true, rotationPeriodInDays: 365 });
        expect(r.body.organisation.identity).to.equal(org);
      }
      expect((await d.get('/keys/default', { org: 'org-other' })).body.identity).not.to.equal((await d.get('/keys/default')).body.identity);
      const secret = keyObjects(stack, (await d.get('/keys/default')).body.identity);
      expect(secret).to.have.length(1);
      expect(secret[0]).to.include({ cls: CKO.SECRET, keyType: CKK.AES, sensitive: true, extractable: false });
    });

    it('encrypts and decrypts like any AES key', async () => {
      const e = await d.post('/keys/default/encrypt', { plaintext: b64('org data') });
      expect(e.status).to.equal(200);
      const p = await d.post('/keys/default/decrypt', { ciphertext: e.body.ciphertext });
      expect(Buffer.from(p.body.plaintext, 'base64').toString()).to.equal('org data');
    });

    it('refuses manual rotate, rotation PATCH, disable and delete with 409 KeyStateConflict and stays unchanged', async () => {
      const before = (await d.get('/keys/default')).body;
      expectError(await d.post('/keys/default/rotate'), 409, 'KeyStateConflict');
      expectError(await d.patch('/keys/default/rotation', { keyRotationEnabled: false }), 409, 'KeyStateConflict');
      expectError(await d.patch('/keys/default/rotation', { keyRotationEnabled: true, rotationPeriodInDays: 7 }), 409, 'KeyStateConflict');
      expectError(await d.post('/keys/default/disable'), 409, 'KeyStateConflict');
      expectError(await d.del('/keys/default'), 409, 'KeyStateConflict');
      expectError(await d.del(`/keys/${before.identity}?pendingWindowInDays=7`), 409, 'KeyStateConflict');
      const after = (await d.get('/keys/default')).body;
      expect(after).to.deep.equal(before);
    });
  });

  describe('two daemons on one data dir and token', () => {
    let d2: Daemon;
    before(async () => {
      d2 = await stack.start();
    });
    after(() => d2.stop());

    it('a key created on one is read, used and disabled on the other; the first refuses encrypt on its next request', async () => {
      const k = await d.createKey('shared key', 'aes256-gcm96');
      const g = await d2.get(`/keys/${k.identity}`);
      expect(g.status).to.equal(200);
      expect(g.body).to.deep.equal((await d.get(`/keys/${k.identity}`)).body);
      const ct = (await d2.post(`/keys/${k.identity}/encrypt`, { plaintext: b64('two') })).body.ciphertext;
      expect(Buffer.from((await d.post(`/keys/${k.identity}/decrypt`, { ciphertext: ct })).body.plaintext, 'base64').toString()).to.equal('two');

      expect((await d2.post(`/keys/${k.identity}/disable`)).body.status).to.equal('disabled');
      expectError(await d.post(`/keys/${k.identity}/encrypt`, { plaintext: b64('x') }), 409, 'KeyStateConflict');
      expect((await d.get(`/keys/${k.identity}`)).body.status).to.equal('disabled');

      expect((await d.post(`/keys/${k.identity}/enable`)).body.status).to.equal('active');
      expect((await d2.post(`/keys/${k.identity}/encrypt`, { plaintext: b64('x') })).status).to.equal(200);
    });

    it('rotation and deletion on one are seen by the other at once', async () => {
      const k = await d2.createKey('shared rot', 'aes256-gcm96');
      const v1 = (await d.post(`/keys/${k.identity}/encrypt`, { plaintext: b64('v1') })).body;
      expect(v1.keyVersion).to.equal('1');
      await d2.post(`/keys/${k.identity}/rotate`);
      const v2 = (await d.post(`/keys/${k.identity}/encrypt`, { plaintext: b64('v2') })).body;
      expect(v2.keyVersion).to.equal('2');
      expect((await d2.post(`/keys/${k.identity}/decrypt`, { ciphertext: v2.ciphertext })).status).to.equal(200);
      await d.patch(`/keys/${k.identity}`, { minDecryptionVersion: 2 });
      expectError(await d2.post(`/keys/${k.identity}/decrypt`, { ciphertext: v1.ciphertext }), 422, 'VersionNotAllowed');
      await d.del(`/keys/${k.identity}`);
      expectError(await d2.post(`/keys/${k.identity}/encrypt`, { plaintext: b64('x') }), 409, 'KeyStateConflict');
      expect((await d2.get('/keys?status=pending_deletion')).body.map((x: any) => x.identity)).to.include(k.identity);
    });

    it('a slug taken on one daemon → 409 Conflict on the other', async () => {
      await d.createKey('shared slug', 'hmac');
      expectError(await d2.post('/keys', { name: 'Shared Slug', keyType: 'hmac' }), 409, 'Conflict');
    });
  });

  describe('robustness: no 5xx from malformed JSON or wrong types', () => {
    let id: string;
    before(async () => {
      id = (await d.createKey('robust', 'aes256-gcm96')).identity;
    });

    // not JSON at all: 400 on every route, bodyless routes included (the body is parsed first)
    const invalidJson = ['{', '{"name":', '}', 'nul', '[1,2', '{"name":"x","keyType":"hmac",}', "{'name':'x'}", '\u0000\u0001', '1e999x'];
    // valid JSON that is hostile or odd: never a 5xx, and never a key
    const oddJson = [
      '{"a":' + '['.repeat(5000) + ']'.repeat(5000) + '}',
      '{"name":"\\ud800","keyType":"hmac"}',
      '{"__proto__":{"admin":true},"name":"x","keyType":"hmac"}',
      '{"constructor":{"prototype":{"x":1}}}',
      '1e999',
      '"\\u0000"',
      'null',
    ];
    const routes = (id: string): [string, string][] => [
      ['POST', '/v1/kms/nl-01/keys'],
      ['PATCH', `/v1/kms/nl-01/keys/${id}`],
      ['PATCH', `/v1/kms/nl-01/keys/${id}/rotation`],
      ['POST', `/v1/kms/nl-01/keys/${id}/rotate`],
      ['POST', `/v1/kms/nl-01/keys/${id}/disable`],
      ['POST', `/v1/kms/nl-01/keys/${id}/enable`],
      ['DELETE', `/v1/kms/nl-01/keys/${id}/cancel-deletion`],
      ['POST', `/v1/kms/nl-01/keys/${id}/encrypt`],
    ];

    it('bodies that are not JSON on every key route → 400 ValidationError', async () => {
      for (const [method, path] of routes(id))
        for (const raw of invalidJson) expectError(await d.call(method, path, undefined, { raw }), 400, 'ValidationError');
      expect((await d.get(`/keys/${id}`)).body).to.include({ status: 'active', latestVersion: 1 });
    });

    it('odd or hostile JSON on every key route → never a 5xx, always JSON', async () => {
      for (const [method, path] of routes(id))
        for (const raw of oddJson) {
          const r = await d.call(method, path, undefined, { raw });
          expect(r.status, `${method} ${path} ${raw.slice(0, 40)} → ${JSON.stringify(r.body).slice(0, 200)}`).to.be.below(500);
          expect(r.headers.get('content-type')).to.match(/^application\/json/);
          if (method === 'POST' && path.endsWith('/keys')) expectError(r, 400, 'ValidationError');
        }
      expect(d.alive).to.equal(true);
      expect(Object.prototype).not.to.have.property('admin');
      expect((await d.get('/keys?slug=x')).body).to.deep.equal([]);
    });

    it('wrong JSON types for every field of create and rotation → 400 ValidationError', async () => {
      const values = [null, true, 0, -1, 1e308, '', 'x'.repeat(3000), [], {}, [1], { a: 1 }];
      for (const field of ['name', 'keyType', 'description', 'labels', 'annotations', 'exportAllowed', 'keyRotationEnabled', 'rotationPeriodInDays'])
        for (const v of values) {
          const body: Record<string, unknown> = { name: 'wt', keyType: 'hmac', [field]: v };
          const r = await d.post('/keys', body);
          if (r.status === 201) {
            // only values that are valid for that field may succeed; clean up
            await d.del(`/keys/${r.body.identity}`);
            continue;
          }
          expect(r.status, `${field}=${JSON.stringify(v).slice(0, 30)}: ${JSON.stringify(r.body)}`).to.be.within(400, 499);
        }
      for (const field of ['keyRotationEnabled', 'rotationPeriodInDays'])
        for (const v of values) {
          const r = await d.patch(`/keys/${id}/rotation`, { [field]: v });
          expect(r.status, `${field}=${JSON.stringify(v).slice(0, 30)}`).to.be.oneOf([200, 400]);
        }
      expect(d.alive).to.equal(true);
    });

    it('a non-JSON Content-Type with a body is not a 5xx; a JSON body without Content-Type neither', async () => {
      const r1 = await d.call('POST', '/v1/kms/nl-01/keys', undefined, { raw: 'name=x&keyType=hmac', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
      expectError(r1, 400, 'ValidationError');
      const r2 = await d.call('POST', '/v1/kms/nl-01/keys', undefined, { raw: '{"name":"x"}', headers: { 'content-type': 'text/plain' } });
      expectError(r2, 400, 'ValidationError');
    });

    it('oversize bodies → 413 PayloadTooLarge', async () => {
      const r = await d.post('/keys', { name: 'big', keyType: 'hmac', description: 'x'.repeat(70_000) });
      expectError(r, 413, 'PayloadTooLarge');
    });

    it('odd identities in the path → 404, never 5xx', async () => {
      for (const p of ['%00', '%E0%A4%A', '..%2F..%2Fetc', 'x'.repeat(2000), '%F0%9F%94%91', 'default%20', '__proto__', 'constructor'])
        expect((await d.call('GET', `/v1/kms/nl-01/keys/${p}`)).status, p).to.be.within(400, 499);
    });
  });

  describe('X-Request-Id', () => {
    it('echoes the client\u2019s id on success and on errors (also in the error body)', async () => {
      const ok = await d.get('/keys', { headers: { 'x-request-id': 'my-req-123' } });
      expect(ok.headers.get('x-request-id')).to.equal('my-req-123');
      const err = await d.get('/keys/nope', { headers: { 'x-request-id': 'my-req-404' } });
      expect(err.headers.get('x-request-id')).to.equal('my-req-404');
      expect(err.body.requestId).to.equal('my-req-404');
      const unauth = await d.get('/keys', { token: null, headers: { 'x-request-id': 'my-req-401' } });
      expect(unauth.status).to.equal(401);
      expect(unauth.body.requestId).to.equal('my-req-401');
    });

    it('generates a fresh id when none (or an unusable one) is sent', async () => {
      const a = await d.get('/keys');
      const b = await d.get('/keys');
      expect(a.headers.get('x-request-id')).to.be.a('string').and.not.equal('');
      expect(a.headers.get('x-request-id')).not.to.equal(b.headers.get('x-request-id'));
      const long = 'x'.repeat(129);
      const c = await d.get('/keys/nope', { headers: { 'x-request-id': long } });
      expect(c.headers.get('x-request-id')).not.to.equal(long);
      expect(c.body.requestId).to.equal(c.headers.get('x-request-id'));
      const max = 'y'.repeat(128);
      expect((await d.get('/keys', { headers: { 'x-request-id': max } })).headers.get('x-request-id')).to.equal(max);
      const health = await d.call('GET', '/healthz', undefined, { token: null, org: null });
      expect(health.headers.get('x-request-id')).to.be.a('string').and.not.equal('');
    });

    it('the audit record of a request carries its request id', async () => {
      const k = await d.createKey('reqid key', 'aes256-gcm96', {}, { headers: { 'x-request-id': 'audit-req-42' } });
      const r = await d.get(`/audit?keyIdentity=${k.identity}&action=kms.create`);
      expect(r.body.events[0].requestId).to.equal('audit-req-42');
    });
  });
});

describe('keys: scheduled destruction via the testing clock', function () {
  this.timeout(120_000);
  let stack: TestStack;
  let d: Daemon;

  before(async () => {
    stack = await TestStack.create({ name: 'keys-destroy', mongodbUri: ownMongoUri('keys-destroy'), config: { rotation: { evaluationIntervalSeconds: 1, maxManualRotations: 10 } } });
    d = await stack.start();
  });
  after(() => stack.cleanup());

  it('at deletionDate the job destroys every version\u2019s token objects, the key is 404, and kms.destroy is audited', async () => {
    const short = await d.createKey('doomed short', 'ecdsa-p256');
    await d.post(`/keys/${short.identity}/rotate`);
    const long = await d.createKey('doomed long', 'aes256-gcm96');
    const keeper = await d.createKey('keeper', 'aes256-gcm96');
    expect(keyObjects(stack, short.identity), 'two versions × (private + public)').to.have.length(4);
    expect(keyObjects(stack, long.identity)).to.have.length(1);

    expect((await d.del(`/keys/${short.identity}?pendingWindowInDays=7`)).status).to.equal(200);
    expect((await d.del(`/keys/${long.identity}`)).status).to.equal(200);

    await d.advanceClock(8 * 86400);
    await waitFor('the 7-day key to be destroyed', async () => (await d.get(`/keys/${short.identity}`)).status === 404);
    expect(keyObjects(stack, short.identity), 'no object of any version left').to.have.length(0);
    // same evaluation pass: the 30-day key is still pending, with its object
    const l = await d.get(`/keys/${long.identity}`);
    expect(l.status).to.equal(200);
    expect(l.body.status).to.equal('pending_deletion');
    expect(keyObjects(stack, long.identity)).to.have.length(1);

    await d.advanceClock(23 * 86400);
    await waitFor('the 30-day key to be destroyed', async () => (await d.get(`/keys/${long.identity}`)).status === 404);
    expect(keyObjects(stack, long.identity)).to.have.length(0);

    expectError(await d.post(`/keys/${short.identity}/encrypt`, { plaintext: b64('x') }), 404, 'NotFound');
    expect((await d.get('/keys')).body.map((k: any) => k.identity)).not.to.include.members([short.identity, long.identity]);
    expect((await d.get('/keys/doomed-short')).status).to.equal(404);

    for (const k of [short, long]) {
      const a = await d.get(`/audit?keyIdentity=${k.identity}&action=kms.destroy`);
      expect(a.status).to.equal(200);
      expect(a.body.events, `one kms.destroy for ${k.slug}`).to.have.length(1);
      expect(a.body.events[0]).to.include({ action: 'kms.destroy', keyIdentity: k.identity, outcome: 'success', organisationIdentity: ORG });
    }
    // the key that was never deleted is untouched, and the slug can be used again
    expect((await d.get(`/keys/${keeper.identity}`)).body.status).to.equal('active');
    expect(keyObjects(stack, keeper.identity)).to.have.length(1);
    const again = await d.createKey('doomed short', 'hmac');
    expect(again.identity).not.to.equal(short.identity);
  });

  it('a cancelled deletion survives the window', async () => {
    const k = await d.createKey('saved', 'aes256-gcm96');
    const doomed = await d.createKey('not saved', 'aes256-gcm96');
    await d.del(`/keys/${k.identity}?pendingWindowInDays=7`);
    await d.del(`/keys/${doomed.identity}?pendingWindowInDays=7`);
    await d.post(`/keys/${k.identity}/cancel-deletion`);
    await d.advanceClock(8 * 86400);
    await waitFor('the uncancelled key to be destroyed', async () => (await d.get(`/keys/${doomed.identity}`)).status === 404);
    const r = await d.get(`/keys/${k.identity}`);
    expect(r.body).to.include({ status: 'active', deletionDate: null });
    expect(keyObjects(stack, k.identity)).to.have.length(1);
  });

  it('a key destroyed through one daemon takes the other daemon\u2019s working copy with it', async () => {
    const d2 = await stack.start();
    const copies = async (x: Daemon) => {
      const m = await x.call('GET', '/metrics', undefined, { token: null, org: null });
      return Number(/kmsd_token_working_copies\{[^}]*region="nl-01"[^}]*\} (\d+)/.exec(String(m.body))![1]);
    };
    try {
      const k = await d.createKey('copied then destroyed', 'aes256-gcm96');
      const before = [await copies(d), await copies(d2)];
      for (const x of [d, d2]) expect((await x.post(`/keys/${k.identity}/encrypt`, { plaintext: 'aGk=' })).status).to.equal(200);
      expect([await copies(d), await copies(d2)]).to.deep.equal([before[0]! + 1, before[1]! + 1]);
      await d.del(`/keys/${k.identity}?pendingWindowInDays=7`);
      await d.advanceClock(8 * 86400);
      // each daemon learns of the destruction on its next request, whichever of them ran the job
      await waitFor('destroyed on both', async () => (await d.get(`/keys/${k.identity}`)).status === 404 && (await d2.get(`/keys/${k.identity}`)).status === 404);
      expect([await copies(d), await copies(d2)]).to.deep.equal(before);
      expect(keyObjects(stack, k.identity)).to.have.length(0);
    } finally {
      await d2.stop();
    }
  });

  it('destruction is safe with two daemons evaluating the same data dir: one kms.destroy, objects gone', async () => {
    const d2 = await stack.start();
    try {
      const k = await d2.createKey('doomed shared', 'ed25519');
      await d.del(`/keys/${k.identity}?pendingWindowInDays=7`);
      await d2.advanceClock(8 * 86400);
      await waitFor('destroyed on both', async () => (await d.get(`/keys/${k.identity}`)).status === 404 && (await d2.get(`/keys/${k.identity}`)).status === 404);
      expect(keyObjects(stack, k.identity)).to.have.length(0);
      const a = await d.get(`/audit?keyIdentity=${k.identity}&action=kms.destroy`);
      expect(a.body.events).to.have.length(1);
    } finally {
      await d2.stop();
    }
  });
});
