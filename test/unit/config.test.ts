import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { ConfigError, loadConfig } from '../../src/config/load.js';

const VALID = {
  listen: { host: '127.0.0.1', port: 8200 },
  dataDir: './data',
  mongodbUri: 'mongodb://127.0.0.1:27017/kmsd',
  regions: [{ name: 'nl-01', pkcs11Module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 'kmsd-nl-01', pinEnv: 'KMSD_PIN_NL_01' }],
  organisations: [{ identity: 'org-demo', kmsEnabled: true }],
  principals: [{ name: 'demo-admin', tokenSha256: 'a'.repeat(64), organisations: ['org-demo'], roles: ['admin'] }],
  rotation: { evaluationIntervalSeconds: 3600, maxManualRotations: 10 },
  limits: { maxBodyBytes: 65536, maxBatchItems: 1000 },
  export: { allowPlaintext: false },
  testing: { clockControl: false },
};

describe('unit: config file validation (loadConfig on temp files)', () => {
  let dir: string;
  let n = 0;
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'kmsd-config-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const write = (text: string, ext = 'yaml') => {
    const f = path.join(dir, `c${++n}.${ext}`);
    writeFileSync(f, text);
    return f;
  };
  const failure = (file: string): string => {
    try {
      loadConfig(file);
    } catch (e) {
      expect(e).to.be.instanceOf(ConfigError);
      return (e as Error).message;
    }
    throw new Error('config was accepted');
  };
  const withChange = (mutate: (c: any) => void) => {
    const c = structuredClone(VALID) as any;
    mutate(c);
    return write(stringify(c));
  };

  it('accepts the contract\u2019s example (YAML and JSON) and resolves dataDir against the file\u2019s folder', () => {
    const y = loadConfig(write(stringify(VALID)));
    expect(y.dataDir).to.equal(path.join(dir, 'data'));
    expect(y.regions[0]!.tokenLabel).to.equal('kmsd-nl-01');
    const j = loadConfig(write(JSON.stringify(VALID), 'json'));
    expect(j.principals[0]!.roles).to.deep.equal(['admin']);
  });

  it('fills the contract\u2019s defaults', () => {
    const c = loadConfig(write(stringify({ mongodbUri: VALID.mongodbUri, regions: VALID.regions })));
    expect(c.listen).to.deep.equal({ host: '127.0.0.1', port: 8200 });
    expect(c.rotation).to.deep.equal({ evaluationIntervalSeconds: 3600, maxManualRotations: 10 });
    expect(c.limits).to.deep.equal({ maxBodyBytes: 65536, maxBatchItems: 1000, maxOpenImportTokens: 50 });
    expect(c.export.allowPlaintext).to.equal(false);
    expect(c.testing.clockControl).to.equal(false);
  });

  it('accepts store.postgres (cluster mode) and resolves passwordFile against the file\u2019s folder', () => {
    const c = loadConfig(withChange((x) => (x.store = { postgres: { uri: 'postgresql://kmsd@10.0.0.1:5432,10.0.0.2:5432/kmsd?target_session_attrs=read-write', passwordFile: 'pg.pw' } })));
    expect(c.store?.postgres?.uri).to.match(/^postgresql:/);
    expect(c.store?.postgres?.passwordFile).to.equal(path.join(dir, 'pg.pw'));
  });

  const cases: [string, (c: any) => void, string][] = [
    ['missing tokenLabel', (c) => delete c.regions[0].tokenLabel, 'regions[0].tokenLabel'],
    ['port as a string', (c) => (c.listen.port = '8200'), 'listen.port'],
    ['port out of range', (c) => (c.listen.port = 70000), 'listen.port'],
    ['unknown top-level key', (c) => (c.colour = 'blue'), 'colour'],
    ['unknown nested key', (c) => (c.rotation.every = 5), 'every'],
    ['PIN in the file', (c) => (c.regions[0].pin = '1234'), 'pin'],
    ['neither pinEnv nor pinFile', (c) => delete c.regions[0].pinEnv, 'regions[0].pinEnv'],
    ['both pinEnv and pinFile', (c) => (c.regions[0].pinFile = './pin'), 'regions[0].pinEnv'],
    ['unknown role', (c) => (c.principals[0].roles = ['superuser']), 'principals[0].roles[0]'],
    ['store.postgres.uri not a postgresql:// URI', (c) => (c.store = { postgres: { uri: 'mysql://x/y' } }), 'store.postgres.uri'],
    ['store.postgres with a password in the file', (c) => (c.store = { postgres: { uri: 'postgresql://k@h/db', password: 'x' } }), 'password'],
    ['store.postgres with both passwordEnv and passwordFile', (c) => (c.store = { postgres: { uri: 'postgresql://k@h/db', passwordEnv: 'P', passwordFile: './p' } }), 'store.postgres.passwordEnv'],
    ['tokenSha256 not hex', (c) => (c.principals[0].tokenSha256 = 'xyz'), 'principals[0].tokenSha256'],
    ['bad mongodbUri', (c) => (c.mongodbUri = 'http://localhost'), 'mongodbUri'],
    ['missing mongodbUri', (c) => delete c.mongodbUri, 'mongodbUri'],
    ['no regions', (c) => (c.regions = []), 'regions'],
    ['duplicate region', (c) => c.regions.push({ ...c.regions[0] }), 'regions[1].name'],
    ['bad region name', (c) => (c.regions[0].name = 'NL 01'), 'regions[0].name'],
    ['kmsEnabled as a string', (c) => (c.organisations[0].kmsEnabled = 'yes'), 'organisations[0].kmsEnabled'],
    ['evaluationIntervalSeconds 0', (c) => (c.rotation.evaluationIntervalSeconds = 0), 'rotation.evaluationIntervalSeconds'],
    ['maxManualRotations fractional', (c) => (c.rotation.maxManualRotations = 1.5), 'rotation.maxManualRotations'],
    ['maxBodyBytes below 1024', (c) => (c.limits.maxBodyBytes = 10), 'limits.maxBodyBytes'],
    ['maxBatchItems 0', (c) => (c.limits.maxBatchItems = 0), 'limits.maxBatchItems'],
    ['allowPlaintext as a string', (c) => (c.export.allowPlaintext = 'false'), 'export.allowPlaintext'],
    ['clockControl as a number', (c) => (c.testing.clockControl = 1), 'testing.clockControl'],
    [
      'XKS keystore on an unknown region',
      (c) =>
        (c.xks = {
          listen: { host: '127.0.0.1', port: 8443 },
          keystores: [{ uriPrefix: 'p', organisation: 'org-demo', region: 'xx-99', sigv4Region: 'us-east-1', credentials: [{ accessKeyId: 'BETWEEN2TENAND3TENCHARACTERS', secretAccessKeyEnv: 'S' }] }],
        }),
      'xks.keystores[0].region',
    ],
  ];
  for (const [what, mutate, field] of cases)
    it(`${what} → ConfigError naming ${field}`, () => {
      expect(failure(withChange(mutate))).to.include(field);
    });

  it('reports every problem at once, one line per field', () => {
    const msg = failure(
      withChange((c) => {
        c.listen.port = 'x';
        c.mongodbUri = 'nope';
        delete c.regions[0].pkcs11Module;
      }),
    );
    expect(msg).to.include('listen.port');
    expect(msg).to.include('mongodbUri');
    expect(msg).to.include('regions[0].pkcs11Module');
    expect(msg.split('\n').length).to.be.at.least(4);
  });

  it('a file that does not parse, a missing file, and an empty file are clear errors', () => {
    expect(failure(write('listen: [1, 2\n  bad: :'))).to.match(/not valid YAML\/JSON/);
    expect(failure(path.join(dir, 'missing.yaml'))).to.match(/cannot read config file/);
    expect(failure(write(''))).to.include('mongodbUri');
    expect(failure(write('- just\n- a list\n'))).to.match(/invalid config/);
  });

  it('an unquoted all-digit tokenSha256 (YAML reads a number) says to quote it', () => {
    const text = stringify(VALID).replace(`tokenSha256: ${'a'.repeat(64)}`, `tokenSha256: ${'0'.repeat(64)}`);
    expect(text).to.include(`tokenSha256: ${'0'.repeat(64)}`);
    const msg = failure(write(text));
    expect(msg).to.include('principals[0].tokenSha256');
    expect(msg).to.match(/put it in quotes/);
    // quoted, the same value is fine
    loadConfig(write(text.replace(`tokenSha256: ${'0'.repeat(64)}`, `tokenSha256: "${'0'.repeat(64)}"`)));
  });
});
