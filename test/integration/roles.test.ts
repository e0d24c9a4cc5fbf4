import { expect } from 'chai';
import { constants, publicEncrypt } from 'node:crypto';
import { ownMongoUri } from './keys-token.js';
import { TestStack, type CallOptions, type Daemon, type Reply } from '../helpers/stack.js';

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

function expectError(r: Reply, status: number, code: string, what = ''): void {
  expect(r.status, `${what} ${JSON.stringify(r.body)}`).to.equal(status);
  expect(r.headers.get('content-type'), what).to.match(/^application\/json/);
  expect(r.body.code, `${what} ${JSON.stringify(r.body)}`).to.equal(code);
  expect(r.body.message, what).to.be.a('string').and.not.equal('');
  expect(r.body.requestId, what).to.equal(r.headers.get('x-request-id'));
}

type Role = 'admin' | 'key-admin' | 'crypto-user' | 'auditor';
const ROLES: Role[] = ['admin', 'key-admin', 'crypto-user', 'auditor'];

/** The fixture keys every route case works on (identities), per scope. */
interface Keys {
  aes: string;
  aes2: string;
  ec: string;
  hmac: string;
  rsa: string;
  exportable: string;
  /** ciphertext, signature and MAC made by the keys above */
  ct: string;
  sig: string;
  mac: string;
  oaep: string;
}

interface KeyRoute {
  name: string;
  method: string;
  path: (k: Keys, id?: string) => string;
  body?: (k: Keys) => unknown;
  /** which fixture key the route is called on */
  key: keyof Omit<Keys, 'ct' | 'sig' | 'mac' | 'oaep'>;
}

/** Every route that names a key, with a body that is valid for an allowed caller. */
const KEY_ROUTES: KeyRoute[] = [
  { name: 'get', method: 'GET', path: (k, id) => `/keys/${id ?? k.aes}`, key: 'aes' },
  { name: 'patch', method: 'PATCH', path: (k, id) => `/keys/${id ?? k.aes}`, body: () => ({ minDecryptionVersion: 1 }), key: 'aes' },
  { name: 'rotate', method: 'POST', path: (k, id) => `/keys/${id ?? k.aes2}/rotate`, key: 'aes2' },
  { name: 'rotation', method: 'PATCH', path: (k, id) => `/keys/${id ?? k.aes}/rotation`, body: () => ({ keyRotationEnabled: false }), key: 'aes' },
  { name: 'disable', method: 'POST', path: (k, id) => `/keys/${id ?? k.aes2}/disable`, key: 'aes2' },
  { name: 'enable', method: 'POST', path: (k, id) => `/keys/${id ?? k.aes2}/enable`, key: 'aes2' },
  { name: 'delete', method: 'DELETE', path: (k, id) => `/keys/${id ?? k.aes2}`, key: 'aes2' },
  { name: 'cancel-deletion (DELETE)', method: 'DELETE', path: (k, id) => `/keys/${id ?? k.aes2}/cancel-deletion`, key: 'aes2' },
  { name: 'cancel-deletion (POST)', method: 'POST', path: (k, id) => `/keys/${id ?? k.aes2}/cancel-deletion`, key: 'aes2' },
  { name: 'encrypt', method: 'POST', path: (k, id) => `/keys/${id ?? k.aes}/encrypt`, body: () => ({ plaintext: b64('x') }), key: 'aes' },
  { name: 'decrypt', method: 'POST', path: (k, id) => `/keys/${id ?? k.aes}/decrypt`, body: (k) => ({ ciphertext: k.ct }), key: 'aes' },
  { name: 're-encrypt', method: 'POST', path: (k, id) => `/keys/${id ?? k.aes}/re-encrypt`, body: (k) => ({ ciphertext: k.ct }), key: 'aes' },
  { name: 'generate-data-key', method: 'POST', path: (k, id) => `/keys/${id ?? k.aes}/generate-data-key`, body: () => ({ keySpec: 'AES_256' }), key: 'aes' },
  { name: 'sign', method: 'POST', path: (k, id) => `/keys/${id ?? k.ec}/sign`, body: () => ({ input: b64('m') }), key: 'ec' },
  { name: 'verify', method: 'POST', path: (k, id) => `/keys/${id ?? k.ec}/verify`, body: (k) => ({ input: b64('m'), signature: k.sig }), key: 'ec' },
  { name: 'hmac', method: 'POST', path: (k, id) => `/keys/${id ?? k.hmac}/hmac`, body: () => ({ input: b64('m') }), key: 'hmac' },
  { name: 'verify-hmac', method: 'POST', path: (k, id) => `/keys/${id ?? k.hmac}/verify-hmac`, body: (k) => ({ input: b64('m'), hmac: k.mac }), key: 'hmac' },
  { name: 'public-key', method: 'GET', path: (k, id) => `/keys/${id ?? k.ec}/public-key`, key: 'ec' },
  { name: 'decrypt-asymmetric', method: 'POST', path: (k, id) => `/keys/${id ?? k.rsa}/decrypt-asymmetric`, body: (k) => ({ ciphertext: k.oaep, keyVersion: '1' }), key: 'rsa' },
  { name: 'export', method: 'POST', path: (k, id) => `/keys/${id ?? k.exportable}/export`, body: () => ({}), key: 'exportable' },
  {
    name: 'import-version',
    method: 'POST',
    path: (k, id) => `/keys/${id ?? k.aes}/import-version`,
    body: () => ({ importToken: 'no-such-token', wrappedKeyMaterial: b64('x'.repeat(40)) }),
    key: 'aes',
  },
];

describe('roles: scopes, organisations, regions, authentication and the role matrix', function () {
  this.timeout(120_000);
  let stack: TestStack;
  let d: Daemon;
  let org: Keys;
  let proj: Keys;

  const as = (role: Role | 'outsider' | 'ghost', o: CallOptions = {}): CallOptions => ({ token: stack.token(role), ...o });
  const call = (r: KeyRoute, keys: Keys, o: CallOptions, id?: string) =>
    d.call(r.method, `/v1/kms/nl-01${r.path(keys, id)}`, r.body?.(keys), o);

  async function fixture(o: CallOptions, prefix: string): Promise<Keys> {
    const mk = async (name: string, type: string, extra = {}) => (await d.createKey(`${prefix} ${name}`, type, extra, o)).identity as string;
    const [aes, aes2, ec, hmac, rsa, exportable] = await Promise.all([
      mk('aes', 'aes256-gcm96'),
      mk('aes2', 'aes256-gcm96'),
      mk('ec', 'ecdsa-p256'),
      mk('hmac', 'hmac-sha256'),
      mk('rsa', 'rsa-2048'),
      mk('exportable', 'aes256-gcm96', { exportAllowed: true }),
    ]);
    const ct = (await d.post(`/keys/${aes}/encrypt`, { plaintext: b64('fixture') }, o)).body.ciphertext;
    const sig = (await d.post(`/keys/${ec}/sign`, { input: b64('m') }, o)).body.signature;
    const mac = (await d.post(`/keys/${hmac}/hmac`, { input: b64('m') }, o)).body.hmac;
    const pem = (await d.get(`/keys/${rsa}/public-key`, o)).body.keys['1'];
    const oaep = publicEncrypt({ key: pem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.from('secret')).toString('base64');
    return { aes, aes2, ec, hmac, rsa, exportable, ct, sig, mac, oaep };
  }

  before(async () => {
    stack = await TestStack.create({
      name: 'roles',
      mongodbUri: ownMongoUri('roles'),
      principals: [
        { name: 'admin', roles: ['admin'] },
        { name: 'key-admin', roles: ['key-admin'] },
        { name: 'crypto-user', roles: ['crypto-user'] },
        { name: 'auditor', roles: ['auditor'] },
        { name: 'outsider', roles: ['admin'], organisations: ['org-other'] },
        { name: 'ghost', roles: ['admin'], organisations: ['org-ghost'] },
      ],
      config: { rotation: { evaluationIntervalSeconds: 3600, maxManualRotations: 50 } },
    });
    d = await stack.start();
    org = await fixture({}, 'org');
    proj = await fixture({ project: 'proj-a' }, 'proj');
  });
  after(() => stack.cleanup());

  describe('authentication (401 Unauthenticated)', () => {
    const paths: [string, string][] = [
      ['GET', '/v1/kms/summary'],
      ['GET', '/v1/kms/nl-01/keys'],
      ['POST', '/v1/kms/nl-01/keys'],
      ['GET', '/v1/kms/nl-01/keys/default'],
      ['POST', '/v1/kms/nl-01/keys/default/encrypt'],
      ['GET', '/v1/kms/nl-01/audit'],
      ['GET', '/v1/kms/audit/verify'],
      ['GET', '/v1/kms/xx-99/keys'],
    ];
    const bad: [string, Record<string, string>][] = [
      ['no Authorization header', {}],
      ['an unknown Bearer token', { authorization: 'Bearer test-nobody-0000' }],
      ['an unknown Token token', { authorization: 'Token test-nobody-0000' }],
      ['Basic auth', { authorization: `Basic ${b64('admin:x')}` }],
      ['a scheme without a token', { authorization: 'Bearer' }],
      ['an empty header', { authorization: '' }],
    ];
    for (const [what, headers] of bad)
      it(`${what} → 401 on every KMS route`, async () => {
        for (const [method, path] of paths) {
          const r = await d.call(method, path, method === 'POST' ? { plaintext: b64('x') } : undefined, { token: null, headers });
          expectError(r, 401, 'Unauthenticated', `${method} ${path}`);
        }
      });

    it('a token differing in one character from a valid one → 401', async () => {
      const t = stack.token('admin');
      const r = await d.get('/keys', { token: t.slice(0, -1) + (t.endsWith('a') ? 'b' : 'a') });
      expectError(r, 401, 'Unauthenticated');
    });

    it('both schemes, Bearer and Token (any case), accept the same tokens', async () => {
      for (const scheme of ['Bearer', 'Token', 'bearer', 'token']) {
        const r = await d.get('/keys/default', { token: null, headers: { authorization: `${scheme} ${stack.token('crypto-user')}` } });
        expect(r.status, scheme).to.equal(200);
        const e = await d.post('/keys/default/encrypt', { plaintext: b64('x') }, { token: null, headers: { authorization: `${scheme} ${stack.token('crypto-user')}` } });
        expect(e.status, scheme).to.equal(200);
      }
    });

    it('health, readiness and metrics need no token', async () => {
      for (const p of ['/healthz', '/readyz', '/metrics']) expect((await d.call('GET', p, undefined, { token: null, org: null })).status, p).to.equal(200);
    });

    it('a missing X-Organisation-Identity → 400 ValidationError naming it', async () => {
      const r = await d.get('/keys', { org: null });
      expectError(r, 400, 'ValidationError');
      expect(r.body.message).to.include('X-Organisation-Identity');
    });
  });

  describe('organisations', () => {
    it('a principal that is not a member of the organisation → 403 Forbidden, even for summary', async () => {
      expectError(await d.get('/keys', as('outsider')), 403, 'Forbidden');
      expectError(await d.call('GET', '/v1/kms/summary', undefined, as('outsider')), 403, 'Forbidden');
      expectError(await d.get(`/keys/${org.aes}`, as('outsider')), 403, 'Forbidden');
      expect((await d.get('/keys', as('outsider', { org: 'org-other' }))).status).to.equal(200);
    });

    it('an X-Project-Identity over 128 characters → 400 ValidationError naming it; 128 is fine', async () => {
      const r = await d.get('/keys', { project: 'p'.repeat(129) });
      expectError(r, 400, 'ValidationError');
      expect(r.body.message).to.include('X-Project-Identity');
      const ok = await d.get('/keys', { project: 'p'.repeat(128) });
      expect(ok.status).to.equal(200);
      expect(ok.body).to.deep.equal([]);
    });

    it('an organisation with kmsEnabled: false → 403 KmsNotEnabled on every KMS route; summary → 200 featureEnabled false', async () => {
      const o = { org: 'org-off' };
      expectError(await d.get('/keys', o), 403, 'KmsNotEnabled', 'list');
      expectError(await d.post('/keys', { name: 'x', keyType: 'hmac' }, o), 403, 'KmsNotEnabled', 'create');
      expectError(await d.get('/keys/default', o), 403, 'KmsNotEnabled', 'get default');
      for (const r of KEY_ROUTES) expectError(await call(r, org, o), 403, 'KmsNotEnabled', r.name);
      expectError(await d.get('/audit', o), 403, 'KmsNotEnabled', 'audit');
      expectError(await d.get('/wrapping-key', o), 403, 'KmsNotEnabled', 'wrapping-key');
      expectError(await d.get('/keys', { ...o, region: 'xx-99' }), 403, 'KmsNotEnabled', 'unknown region');
      const s = await d.call('GET', '/v1/kms/summary', undefined, o);
      expect(s.status).to.equal(200);
      expect(s.body.featureEnabled).to.equal(false);
      expect(s.body.regions).to.be.an('array');
    });

    it('an organisation the daemon is not configured for → 403 KmsNotEnabled; summary → featureEnabled false', async () => {
      const o = as('ghost', { org: 'org-ghost' });
      expectError(await d.get('/keys', o), 403, 'KmsNotEnabled');
      expectError(await d.post('/keys', { name: 'x', keyType: 'hmac' }, o), 403, 'KmsNotEnabled');
      const s = await d.call('GET', '/v1/kms/summary', undefined, o);
      expect(s.status).to.equal(200);
      expect(s.body.featureEnabled).to.equal(false);
    });
  });

  describe('regions', () => {
    it('an unknown region → 404 NotFound on every regional route', async () => {
      const region = 'xx-99';
      expectError(await d.get('/keys', { region }), 404, 'NotFound', 'list');
      expectError(await d.post('/keys', { name: 'x', keyType: 'hmac' }, { region }), 404, 'NotFound', 'create');
      for (const r of KEY_ROUTES) expectError(await d.call(r.method, `/v1/kms/${region}${r.path(org)}`, r.body?.(org)), 404, 'NotFound', r.name);
      expectError(await d.get('/audit', { region }), 404, 'NotFound', 'audit');
      expectError(await d.get('/wrapping-key', { region }), 404, 'NotFound', 'wrapping-key');
    });
  });

  describe('masking: a key of another organisation or project is 404 on every route', () => {
    it('keys are invisible to another organisation (by identity and by slug), same as an unknown key', async () => {
      for (const r of KEY_ROUTES) {
        const byId = await call(r, org, { org: 'org-other' });
        expectError(byId, 404, 'NotFound', `${r.name} by identity`);
        const unknown = await call(r, org, { org: 'org-other' }, 'kms-ffffffffffffffffffff');
        expect(byId.body.message.replace(org[r.key], 'X'), r.name).to.equal(unknown.body.message.replace('kms-ffffffffffffffffffff', 'X'));
        expectError(await call(r, org, { org: 'org-other' }, `org-${r.key}`), 404, 'NotFound', `${r.name} by slug`);
      }
      expect((await d.get('/keys', { org: 'org-other' })).body.map((k: any) => k.identity)).not.to.include(org.aes);
      expect((await d.get(`/keys?identity=${org.aes}`, { org: 'org-other' })).body).to.deep.equal([]);
    });

    it('project keys are invisible at organisation scope and to another project', async () => {
      for (const r of KEY_ROUTES) {
        expectError(await call(r, proj, {}), 404, 'NotFound', `${r.name} without project`);
        expectError(await call(r, proj, { project: 'proj-b' }), 404, 'NotFound', `${r.name} other project`);
        expectError(await call(r, proj, { org: 'org-other', project: 'proj-a' }), 404, 'NotFound', `${r.name} same project name, other org`);
      }
      expect((await d.get('/keys')).body.map((k: any) => k.identity)).not.to.include(proj.aes);
      expect((await d.get('/keys', { project: 'proj-b' })).body).to.deep.equal([]);
    });

    it('organisation keys are invisible with a project header', async () => {
      for (const r of KEY_ROUTES) expectError(await call(r, org, { project: 'proj-a' }), 404, 'NotFound', r.name);
    });

    it('the caller\u2019s own scope still works (the fixtures are real)', async () => {
      expect((await d.get(`/keys/${proj.aes}`, { project: 'proj-a' })).status).to.equal(200);
      expect((await d.post(`/keys/${proj.aes}/decrypt`, { ciphertext: proj.ct }, { project: 'proj-a' })).status).to.equal(200);
      expect((await d.get(`/keys/${org.aes}`)).status).to.equal(200);
    });

    it('re-encrypt to a destinationKey outside the caller\u2019s scope → 404, and the other organisation\u2019s ciphertext is useless here', async () => {
      expectError(await d.post(`/keys/${org.aes}/re-encrypt`, { ciphertext: org.ct, destinationKey: proj.aes }), 404, 'NotFound');
      const other = await d.createKey('other org aes', 'aes256-gcm96', {}, { org: 'org-other' });
      expectError(await d.post(`/keys/${org.aes}/re-encrypt`, { ciphertext: org.ct, destinationKey: other.identity }), 404, 'NotFound');
      const r = await d.post(`/keys/${other.identity}/decrypt`, { ciphertext: org.ct }, { org: 'org-other' });
      expect(r.status).to.be.oneOf([400, 422]);
    });

    it('the audit trail of one organisation does not show another\u2019s key events', async () => {
      const r = await d.get(`/audit?keyIdentity=${org.aes}`, { org: 'org-other' });
      expect(r.status).to.equal(200);
      expect(r.body.events).to.deep.equal([]);
      const mine = await d.get(`/audit?keyIdentity=${org.aes}`);
      expect(mine.body.events.length).to.be.greaterThan(0);
    });
  });

  describe('the role matrix (allowed → 2xx, can read but lacks the permission → 403 Forbidden)', () => {
    type Perm = 'read' | 'create' | 'update' | 'delete' | 'crypto' | 'audit' | 'import' | 'export';
    const GRANTS: Record<Role, Perm[]> = {
      admin: ['read', 'create', 'update', 'delete', 'crypto', 'audit', 'import', 'export'],
      'key-admin': ['read', 'create', 'update', 'delete', 'import'],
      'crypto-user': ['read', 'crypto'],
      auditor: ['read', 'audit'],
    };
    const PERM_OF: Record<string, Perm> = {
      get: 'read',
      patch: 'update',
      rotate: 'update',
      rotation: 'update',
      disable: 'update',
      enable: 'update',
      delete: 'delete',
      'cancel-deletion (DELETE)': 'delete',
      'cancel-deletion (POST)': 'delete',
      encrypt: 'crypto',
      decrypt: 'crypto',
      're-encrypt': 'crypto',
      'generate-data-key': 'crypto',
      sign: 'crypto',
      verify: 'crypto',
      hmac: 'crypto',
      'verify-hmac': 'crypto',
      'public-key': 'read',
      'decrypt-asymmetric': 'crypto',
      export: 'export',
      'import-version': 'import',
    };
    /** Brings the key into the state the route needs (as admin) before each call. */
    const PREPARE: Record<string, (id: string) => Promise<unknown>> = {
      enable: (id) => d.post(`/keys/${id}/disable`),
      'cancel-deletion (DELETE)': (id) => d.del(`/keys/${id}`),
      'cancel-deletion (POST)': (id) => d.del(`/keys/${id}`),
    };
    const RESET: Record<string, (id: string) => Promise<unknown>> = {
      disable: (id) => d.post(`/keys/${id}/enable`),
      enable: (id) => d.post(`/keys/${id}/enable`),
      delete: (id) => d.post(`/keys/${id}/cancel-deletion`),
      'cancel-deletion (DELETE)': (id) => d.post(`/keys/${id}/cancel-deletion`),
      'cancel-deletion (POST)': (id) => d.post(`/keys/${id}/cancel-deletion`),
    };
    /**
     * BYOK routes get past the permission check to the next rule: export without a wrapping key
     * → 400 (plaintext export is off), import-version on a generated key → 409.
     */
    const ALLOWED_STATUS: Record<string, number> = { export: 400, 'import-version': 409 };

    for (const role of ROLES)
      it(`${role}: every key route`, async () => {
        for (const r of KEY_ROUTES) {
          const id = org[r.key];
          await PREPARE[r.name]?.(id);
          const reply = await call(r, org, as(role));
          await RESET[r.name]?.(id);
          const perm = PERM_OF[r.name]!;
          if (GRANTS[role].includes(perm)) {
            const want = ALLOWED_STATUS[r.name] ?? 200;
            expect(reply.status, `${role} ${r.name}: ${JSON.stringify(reply.body).slice(0, 300)}`).to.equal(want);
          } else {
            expectError(reply, 403, 'Forbidden', `${role} ${r.name}`);
            expect(reply.body.message).to.include(perm);
          }
        }
      });

    for (const role of ROLES)
      it(`${role}: summary, list, create, audit, audit verify, wrapping key, import parameters`, async () => {
        const g = GRANTS[role];
        const expectAllowed = (reply: Reply, perm: Perm, ok: number, what: string) => {
          if (g.includes(perm)) expect(reply.status, `${role} ${what}: ${JSON.stringify(reply.body).slice(0, 300)}`).to.equal(ok);
          else expectError(reply, 403, 'Forbidden', `${role} ${what}`);
        };
        expectAllowed(await d.call('GET', '/v1/kms/summary', undefined, as(role)), 'read', 200, 'summary');
        expectAllowed(await d.get('/keys', as(role)), 'read', 200, 'list');
        const created = await d.post('/keys', { name: `made by ${role}`, keyType: 'hmac' }, as(role));
        expectAllowed(created, 'create', 201, 'create');
        expectAllowed(await d.get('/audit', as(role)), 'audit', 200, 'audit');
        expectAllowed(await d.call('GET', '/v1/kms/audit/verify', undefined, as(role)), 'audit', 200, 'audit verify');
        const ip = await d.post('/keys/import-parameters', { keyType: 'aes256-gcm96', wrappingAlgorithm: 'RSA_OAEP_SHA1' }, as(role));
        expectAllowed(ip, 'import', 200, 'import-parameters');
        const imp = await d.post('/keys/import', { name: `imp ${role}`, keyType: 'aes256-gcm96', importToken: 'nope', wrappedKeyMaterial: b64('x'.repeat(40)) }, as(role));
        if (g.includes('create') && g.includes('import')) expect(imp.status, `${role} import`).to.equal(400);
        else expectError(imp, 403, 'Forbidden', `${role} import`);
        if (!g.includes('create')) expect((await d.get(`/keys/made-by-${role}`)).status).to.equal(404);
      });

    it('wrapping-key needs the import permission (admin and key-admin)', async () => {
      for (const role of ROLES) {
        const r = await d.get('/wrapping-key', as(role));
        if (['admin', 'key-admin'].includes(role)) {
          expect(r.status, `${role}: ${JSON.stringify(r.body).slice(0, 200)}`).to.equal(200);
          expect(r.body.publicKey).to.include('BEGIN PUBLIC KEY');
        } else expectError(r, 403, 'Forbidden', role);
      }
    });

    it('a denied request changes nothing and is audited as denied with the principal', async () => {
      const before = (await d.get(`/keys/${org.aes2}`)).body;
      const r = await d.post(`/keys/${org.aes2}/disable`, undefined, { ...as('crypto-user'), headers: { 'x-request-id': 'denied-disable-1' } });
      expectError(r, 403, 'Forbidden');
      expect((await d.get(`/keys/${org.aes2}`)).body).to.deep.equal(before);
      const a = await d.get(`/audit?keyIdentity=${org.aes2}&action=kms.disable`);
      const ev = a.body.events.find((e: any) => e.requestId === 'denied-disable-1');
      expect(ev).to.include({ outcome: 'denied', principal: 'crypto-user', action: 'kms.disable', keyIdentity: org.aes2 });
    });

    it('a principal with several roles gets the union of their permissions', async () => {
      const s = await TestStack.create({
        name: 'roles-union',
        mongodbUri: ownMongoUri('roles-union'),
        principals: [{ name: 'admin', roles: ['admin'] }, { name: 'both', roles: ['crypto-user', 'auditor'] }],
      });
      try {
        const d2 = await s.start();
        const t = { token: s.token('both') };
        expect((await d2.post('/keys/default/encrypt', { plaintext: b64('x') }, t)).status).to.equal(200);
        expect((await d2.get('/audit', t)).status).to.equal(200);
        expectError(await d2.post('/keys', { name: 'n', keyType: 'hmac' }, t), 403, 'Forbidden');
        expectError(await d2.post('/keys/default/disable', undefined, t), 403, 'Forbidden');
      } finally {
        await s.cleanup();
      }
    });
  });
});
