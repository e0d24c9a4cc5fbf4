import { expect } from 'chai';
import { AwsError, toAwsError } from '../../src/aws/errors.js';
import { KmsError } from '../../src/errors.js';
import { BodyTooLarge } from '../../src/http/read-body.js';
import { TokenError } from '../../src/token/errors.js';
import { toXksError, XksError } from '../../src/xks/errors.js';

// Both adapters map through one helper (src/http/adapter-error.ts); each keeps its own table.
describe('adapter error mapping (AWS KMS API, XKS proxy)', () => {
  it('passes the adapter’s own error through as it is', () => {
    const aws = new AwsError('TagException', 'tag');
    const xks = new XksError('ValidationException', 'GET', 405);
    expect(toAwsError(aws)).to.equal(aws);
    expect(toXksError(xks)).to.equal(xks);
    expect(toXksError(xks).status).to.equal(405);
  });

  it('names a domain error by the adapter’s table, keeping its message', () => {
    const aws = toAwsError(new KmsError('NotFound', 'no key k1'));
    expect([aws.errorName, aws.status, aws.message]).to.deep.equal(['NotFoundException', 400, 'no key k1']);
    const xks = toXksError(new KmsError('NotFound', 'no key k1'));
    expect([xks.errorName, xks.status, xks.message]).to.deep.equal(['KeyNotFoundException', 404, 'no key k1']);
    expect(toAwsError(new KmsError('UnsupportedOperation', 'x')).errorName).to.equal('UnsupportedOperationException');
    expect(toXksError(new KmsError('UnsupportedOperation', 'x')).errorName).to.equal('InvalidKeyUsageException');
  });

  it('answers a domain code the XKS table leaves out as InternalException, without its message', () => {
    const xks = toXksError(new KmsError('Conflict', 'secret detail'));
    expect([xks.errorName, xks.status, xks.message]).to.deep.equal(['InternalException', 500, 'internal error']);
    expect(toAwsError(new KmsError('Conflict', 'c')).errorName).to.equal('ConflictException');
  });

  it('names a body over the limit by each adapter’s name for it, with the limit', () => {
    for (const cut of [false, true]) {
      const aws = toAwsError(new BodyTooLarge(65536, cut));
      expect([aws.errorName, aws.status, aws.message]).to.deep.equal(['RequestEntityTooLargeException', 413, 'request body exceeds 65536 bytes']);
      const xks = toXksError(new BodyTooLarge(65536, cut));
      expect([xks.errorName, xks.status, xks.message]).to.deep.equal(['UnsupportedOperationException', 501, 'request body exceeds 65536 bytes']);
    }
  });

  it('names an unavailable token (or a stale handle) a retryable dependency failure', () => {
    for (const kind of ['unavailable', 'staleHandle'] as const) {
      const aws = toAwsError(new TokenError(kind, 0x30, 'device removed'));
      expect([aws.errorName, aws.status, aws.message]).to.deep.equal(['DependencyTimeoutException', 503, 'the HSM is unavailable: device removed']);
      const xks = toXksError(new TokenError(kind, 0x30, 'device removed'));
      expect([xks.errorName, xks.status, xks.message]).to.deep.equal(['DependencyTimeoutException', 503, 'the HSM is unavailable: device removed']);
    }
  });

  it('answers anything else (a bug) as the internal error, without detail', () => {
    for (const e of [new Error('boom'), new TokenError('badCiphertext', 5, 'tag mismatch'), 'a string']) {
      expect([toAwsError(e).errorName, toAwsError(e).status, toAwsError(e).message]).to.deep.equal(['KMSInternalException', 500, 'internal error']);
      expect([toXksError(e).errorName, toXksError(e).status, toXksError(e).message]).to.deep.equal(['InternalException', 500, 'internal error']);
    }
  });
});
