import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { canonicalContext, decodeBlob, encodeBlob } from '../../src/aws/ciphertext.js';
import { AwsError } from '../../src/aws/errors.js';
import { awsSchemas, plainRequest, validateRequest, type AwsOperation } from '../../src/aws/schemas.js';
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

  it('the hot operations\' shortcut validation answers exactly what their schemas answer', () => {
    const b64 = (n: number) => Buffer.alloc(n, 9).toString('base64');
    const proto = JSON.parse('{"KeyId":"k","Plaintext":"AAAA","__proto__":"x"}') as Record<string, unknown>;
    const protoContext = JSON.parse('{"KeyId":"k","Plaintext":"AAAA","EncryptionContext":{"__proto__":"p","a":"b"}}') as Record<string, unknown>;
    const cases: [AwsOperation, Record<string, unknown>][] = [
      ['Encrypt', { KeyId: 'k', Plaintext: b64(32) }],
      ['Encrypt', { KeyId: 'alias/a', Plaintext: b64(4096), EncryptionContext: { b: '2', a: '1', '': 'x' }, EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' }],
      ['Encrypt', { KeyId: 'k', Plaintext: b64(32), EncryptionContext: { a: 'x'.repeat(8192), ['k'.repeat(8192)]: '' } }],
      ['Encrypt', { KeyId: 'k', Plaintext: b64(32), EncryptionContext: { a: 'x'.repeat(8193) } }],
      ['Encrypt', { KeyId: 'k', Plaintext: b64(32), EncryptionContext: { ['k'.repeat(8193)]: 'v' } }],
      ['Encrypt', { KeyId: 'k', Plaintext: b64(32), EncryptionContext: { a: 1 } }],
      ['Encrypt', { KeyId: 'k', Plaintext: b64(32), EncryptionContext: ['a'] }],
      ['Encrypt', { KeyId: 'k', Plaintext: b64(32), EncryptionContext: null }],
      ['Encrypt', { KeyId: 'k', Plaintext: b64(4097) }],
      ['Encrypt', { KeyId: 'k', Plaintext: '' }],
      ['Encrypt', { KeyId: 'k', Plaintext: 'AAA' }],
      ['Encrypt', { KeyId: 'k', Plaintext: 'AA-A' }],
      ['Encrypt', { KeyId: '', Plaintext: b64(1) }],
      ['Encrypt', { KeyId: 'k'.repeat(2048), Plaintext: b64(1) }],
      ['Encrypt', { KeyId: 'k'.repeat(2049), Plaintext: b64(1) }],
      ['Encrypt', { KeyId: 7, Plaintext: b64(1) }],
      ['Encrypt', { Plaintext: b64(1) }],
      ['Encrypt', { KeyId: 'k', Plaintext: b64(1), EncryptionAlgorithm: 3 }],
      ['Encrypt', { KeyId: 'k', Plaintext: b64(1), GrantTokens: ['t'], DryRun: true, Extra: { x: 1 } }],
      ['Encrypt', proto],
      ['Encrypt', protoContext],
      ['Decrypt', { CiphertextBlob: b64(60) }],
      ['Decrypt', { CiphertextBlob: b64(6144), KeyId: 'k', EncryptionContext: { a: 'b' }, EncryptionAlgorithm: 'RSAES_OAEP_SHA_256' }],
      ['Decrypt', { CiphertextBlob: b64(6145) }],
      ['Decrypt', { CiphertextBlob: b64(60), KeyId: '' }],
      ['Decrypt', { CiphertextBlob: b64(60), Recipient: {} }],
      ['Decrypt', { KeyId: 'k' }],
      ['GenerateDataKey', { KeyId: 'k', KeySpec: 'AES_256' }],
      ['GenerateDataKey', { KeyId: 'k', NumberOfBytes: 1024, EncryptionContext: { a: 'b' } }],
      ['GenerateDataKey', { KeyId: 'k', KeySpec: 'AES_256', NumberOfBytes: 32 }],
      ['GenerateDataKey', { KeyId: 'k', KeySpec: 'AES_512' }],
      ['GenerateDataKey', { KeyId: 'k', NumberOfBytes: 1025 }],
      ['GenerateDataKey', { KeyId: 'k', NumberOfBytes: 1.5 }],
      ['GenerateDataKey', { KeyId: 'k', NumberOfBytes: '32' }],
      ['GenerateDataKey', { KeyId: 'k' }],
    ];
    let shortcuts = 0;
    for (const [op, value] of cases) {
      const schema = awsSchemas[op].safeParse(value);
      const plain = plainRequest(op, value);
      if (plain === undefined) {
        // The schema decides: the same answer as before, errors worded by it.
        if (schema.success) expect(validateRequest(op, value)).to.deep.equal(schema.data);
        else expect(() => validateRequest(op, value)).to.throw(AwsError).with.property('errorName', 'ValidationException');
        continue;
      }
      shortcuts++;
      expect(schema.success, `${op} ${JSON.stringify(value).slice(0, 80)}`).to.equal(true);
      expect(plain).to.deep.equal(schema.data);
      const ctx = (plain as { EncryptionContext?: object }).EncryptionContext;
      if (ctx) expect(Object.getPrototypeOf(ctx)).to.equal(null);
    }
    expect(shortcuts).to.be.greaterThan(5);
    // A context keyed __proto__ keeps that key either way (a different context would be bound as AAD).
    expect(Object.keys((validateRequest('Encrypt', protoContext) as { EncryptionContext: object }).EncryptionContext)).to.deep.equal(['__proto__', 'a']);
  });

  it('an encryption context with more pairs than its canonical form can count (uint16) is a ValidationException, not an internal error', () => {
    const context: Record<string, string> = {};
    for (let i = 0; i < 65536; i++) context[`k${i}`] = '';
    expect(() => validateRequest('Encrypt', { KeyId: 'k', Plaintext: 'AAAA', EncryptionContext: context }))
      .to.throw(AwsError)
      .with.property('errorName', 'ValidationException');
    delete context.k0;
    expect(canonicalContext((validateRequest('Encrypt', { KeyId: 'k', Plaintext: 'AAAA', EncryptionContext: context }) as { EncryptionContext: Record<string, string> }).EncryptionContext).readUInt16BE(0)).to.equal(65535);
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
