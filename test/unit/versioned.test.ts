import { expect } from 'chai';
import fc from 'fast-check';
import { formatVersioned, isBase64, parseVersioned } from '../../src/crypto/versioned.js';
import { KmsError } from '../../src/errors.js';

function rejects(s: unknown): KmsError {
  try {
    parseVersioned(s, 'ciphertext');
  } catch (e) {
    expect(e).to.be.instanceOf(KmsError);
    return e as KmsError;
  }
  throw new Error(`accepted ${JSON.stringify(s)}`);
}

describe('unit: versioned strings kms:v<N>:<base64>', () => {
  it('format then parse gives back version and bytes (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 999_999_999 }), fc.uint8Array({ maxLength: 300 }), (v, bytes) => {
        const s = formatVersioned(v, Buffer.from(bytes));
        expect(s.startsWith(`kms:v${v}:`)).to.equal(true);
        const p = parseVersioned(s, 'ciphertext');
        expect(p.version).to.equal(v);
        expect(Buffer.compare(p.data, Buffer.from(bytes))).to.equal(0);
      }),
      { numRuns: 1000 },
    );
  });

  it('the base64 part is standard base64 with padding', () => {
    expect(formatVersioned(2, Buffer.from([0xfb, 0xff]))).to.equal('kms:v2:+/8=');
    expect(formatVersioned(1, Buffer.alloc(0))).to.equal('kms:v1:');
  });

  const bad: unknown[] = [
    undefined,
    null,
    42,
    {},
    '',
    'kms:v0:AAAA',
    'kms:v-1:AAAA',
    'kms:v01:AAAA',
    'kms:v1000000000:AAAA',
    'kms:v1',
    'kms:1:AAAA',
    'vault:v1:AAAA',
    'KMS:v1:AAAA',
    'kms:v1:AAA',
    'kms:v1:AA=A',
    'kms:v1:-_-_',
    'kms:v1:AAAA ',
    ' kms:v1:AAAA',
    'kms:v1:AAAA\n',
    'kms:v1:AAAA=',
    'kms:v1:A===',
    'kms:v1:AAAA:AAAA',
  ];
  for (const s of bad)
    it(`rejects ${JSON.stringify(s)} with InvalidCiphertext naming the field`, () => {
      const e = rejects(s);
      expect(e.code).to.equal('InvalidCiphertext');
      expect(e.message).to.include('ciphertext');
    });

  it('never throws anything but InvalidCiphertext on random strings (property)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 40 }), fc.string({ maxLength: 20 }).map((x) => `kms:v${x}`)), (s) => {
        try {
          const p = parseVersioned(s, 'x');
          expect(p.version).to.be.within(1, 999_999_999);
        } catch (e) {
          expect((e as KmsError).code).to.equal('InvalidCiphertext');
        }
      }),
      { numRuns: 1000 },
    );
  });

  it('isBase64 accepts exactly what Buffer encodes as standard base64 (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), (b) => {
        expect(isBase64(Buffer.from(b).toString('base64'))).to.equal(true);
      }),
    );
    fc.assert(
      fc.property(fc.string({ maxLength: 24 }), (s) => {
        // accepted strings decode to exactly (len / 4) * 3 - padding bytes: nothing is silently skipped
        if (isBase64(s)) expect(Buffer.from(s, 'base64').length).to.equal((s.length / 4) * 3 - (s.match(/=*$/)![0].length));
      }),
      { numRuns: 2000 },
    );
    for (const s of ['abc', 'YQ', '-_-_', 'YW Jj', '====', 'Y===', 'YWJj\n', 'é'.repeat(4)]) expect(isBase64(s), s).to.equal(false);
    for (const s of ['', 'YQ==', 'YWI=', 'YWJj', '+/+/']) expect(isBase64(s), s).to.equal(true);
  });
});
