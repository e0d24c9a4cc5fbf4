/**
 * XKS request bodies and SigV4 signing for the bench (AWS's own signer, @smithy/signature-v4,
 * with a node:crypto SHA-256). A signed request is valid for 5 minutes, so one request signed
 * right before a run is replayed by every autocannon connection (signing is the client's cost,
 * not the proxy's; the proxy still verifies every request).
 */
import { createHash, createHmac, randomBytes, type Hash, type Hmac } from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';
import type { Checksum, SourceData } from '@smithy/types';

export const XKS_URI_PREFIX = 'bench/xks';
export const XKS_REGION = 'us-east-1';
export const XKS_ACCESS_KEY_ID = 'BENCHXKSACCESSKEYIDAAAAA2';
export const XKS_SECRET_ENV = 'KMSD_BENCH_XKS_SECRET';

const toBuf = (d: SourceData): Buffer =>
  typeof d === 'string' ? Buffer.from(d) : ArrayBuffer.isView(d) ? Buffer.from(d.buffer, d.byteOffset, d.byteLength) : Buffer.from(d as ArrayBuffer);

/** SHA-256 / HMAC-SHA-256 in the shape @smithy/signature-v4 expects (also used by bench/aws.ts). */
export class Sha256 implements Checksum {
  private h: Hash | Hmac;
  constructor(secret?: SourceData) {
    this.h = secret === undefined ? createHash('sha256') : createHmac('sha256', toBuf(secret));
  }
  update(data: Uint8Array): void {
    this.h.update(data);
  }
  async digest(): Promise<Uint8Array> {
    return new Uint8Array(this.h.digest());
  }
  reset(): void {
    throw new Error('not supported');
  }
}

export function requestMetadata(kmsOperation: string) {
  return {
    awsPrincipalArn: 'arn:aws:iam::123456789012:user/bench',
    kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab',
    kmsOperation,
    kmsRequestId: `bench-${randomBytes(8).toString('hex')}`,
  };
}

/** An XKS Encrypt body as AWS KMS sends it: 32-byte plaintext, AAD, integrity value asked for. */
export function encryptBody(): string {
  return JSON.stringify({
    requestMetadata: requestMetadata('Encrypt'),
    plaintext: randomBytes(32).toString('base64'),
    encryptionAlgorithm: 'AES_GCM',
    additionalAuthenticatedData: randomBytes(24).toString('base64'),
    ciphertextDataIntegrityValueAlgorithm: 'SHA_256',
  });
}

/** A response of the same shape and size as an XKS Encrypt answer (for the HTTPS echo). */
export function encryptResponseLike(): Record<string, string> {
  const b = (n: number) => randomBytes(n).toString('base64');
  return { authenticationTag: b(16), ciphertext: b(32), ciphertextDataIntegrityValue: b(32), ciphertextMetadata: b(4), initializationVector: b(12) };
}

export const xksPath = (op: 'health' | 'encrypt', keyId?: string) =>
  op === 'health' ? `/${XKS_URI_PREFIX}/kms/xks/v1/health` : `/${XKS_URI_PREFIX}/kms/xks/v1/keys/${keyId}/${op}`;

/** Headers (host, content-type, x-amz-date, authorization) of one signed POST. */
export async function signedHeaders(port: number, path: string, body: string, secret: string): Promise<Record<string, string>> {
  const signer = new SignatureV4({
    service: 'kms-xks-proxy',
    region: XKS_REGION,
    credentials: { accessKeyId: XKS_ACCESS_KEY_ID, secretAccessKey: secret },
    sha256: Sha256,
    applyChecksum: false,
  });
  const headers = { host: `127.0.0.1:${port}`, 'content-type': 'application/json' };
  const signed = await signer.sign({ method: 'POST', protocol: 'https:', hostname: '127.0.0.1', port, path, query: {}, headers, body });
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(signed.headers)) out[k.toLowerCase()] = String(v);
  return out;
}
