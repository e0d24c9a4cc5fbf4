import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { canonicalContext, decodeBlob, encodeBlob } from '../../src/aws/ciphertext.js';
import { AwsError } from '../../src/aws/errors.js';
import { ConfigError, loadConfig } from '../../src/config/load.js';

const BASE = {
  mongodbUri: 'mongodb://127.0.0.1:27017/kmsd',
  regions: [{ name: 'nl-01', pkcs11Module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 'kmsd-nl-01', pinEnv: 'KMSD_PIN_NL_01' }],
};
const CRED = { accessKeyId: 'AKIAKMSDEXAMPLE00001', secretAccessKeyEnv: 'S', principal: 'p', organisation: 'org', region: 'nl-01' };

describe('unit: AWS KMS API ciphertext blob, encryption context and config', () => {
  it('the canonical context does not depend on member order; absent and empty are the same', () => {
    expect(canonicalContext({ b: '2', a: '1' }).equals(canonicalContext({ a: '1', b: '2' }))).to.equal(true);
    expect(canonicalContext({}).length).to.equal(0);
    expect(canonicalContext(undefined).length).to.equal(0);
    expect(canonicalContext({ a: '1' }).equals(canonicalContext({ a: '2' }))).to.equal(false);
    // lengths are explicit: moving a character between key and value changes the bytes
    expect(canonicalContext({ ab: 'c' }).equals(canonicalContext({ a: 'bc' }))).to.equal(false);
    expect(canonicalContext({ k: 'v' }).toString('hex')).to.equal('00010001' + '6b' + '0001' + '76');
  });

  it('a blob names key and version and round-trips; foreign or truncated bytes are InvalidCiphertextException', () => {
    const sealed = Buffer.alloc(12 + 5 + 16, 7);
    const blob = encodeBlob('kms-0123456789abcdef0123', 42, sealed);
    expect(blob.subarray(0, 4).toString()).to.equal('KMSD');
    const back = decodeBlob(blob);
    expect(back).to.include({ identity: 'kms-0123456789abcdef0123', version: 42 });
    expect(back.sealed.equals(sealed)).to.equal(true);
    for (const bad of [Buffer.alloc(0), Buffer.from('KMSD'), Buffer.concat([Buffer.from('XMSD'), blob.subarray(4)]), blob.subarray(0, blob.length - 20)]) {
      expect(() => decodeBlob(bad)).to.throw(AwsError).with.property('errorName', 'InvalidCiphertextException');
    }
  });

  it('config: the aws block names its bad fields', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'kmsd-aws-config-'));
    try {
      const fail = (aws: unknown) => {
        const f = path.join(dir, `c${Math.random()}.yaml`);
        writeFileSync(f, stringify({ ...BASE, aws }));
        try {
          loadConfig(f);
        } catch (e) {
          expect(e).to.be.instanceOf(ConfigError);
          return (e as Error).message;
        }
        throw new Error('config accepted');
      };
      expect(fail({ credentials: [{ ...CRED, accessKeyId: 'short' }] })).to.include('aws.credentials[0].accessKeyId');
      expect(fail({ credentials: [{ ...CRED, region: 'xx-99' }] })).to.include('unknown region xx-99');
      expect(fail({ accountId: '12', credentials: [CRED] })).to.include('accountId');
      expect(fail({ credentials: [{ ...CRED, secretAccessKeyFile: '/x' }] })).to.include('secretAccessKeyEnv');
      const ok = path.join(dir, 'ok.yaml');
      writeFileSync(ok, stringify({ ...BASE, aws: { credentials: [CRED] } }));
      const c = loadConfig(ok);
      expect(c.aws).to.deep.include({ sigv4Region: 'us-east-1', accountId: '111122223333', listen: { host: '127.0.0.1', port: 4599 } });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
