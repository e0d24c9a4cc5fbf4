/**
 * AWS KMS API request bodies and SigV4 signing for the bench (AWS's own signer with a
 * node:crypto SHA-256, as bench/xks.ts). A signed request is valid for 5 minutes, so one
 * request signed right before a run is replayed by every autocannon connection: signing is the
 * client's cost; kmsd still verifies every request.
 */
import { createHash, createHmac, randomBytes, type Hash, type Hmac } from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';
import type { Checksum, SourceData } from '@smithy/types';

export const AWS_REGION = 'us-east-1';
export const AWS_ACCESS_KEY_ID = 'AKIABENCHKMSD0000001';
export const AWS_SECRET_ENV = 'KMSD_BENCH_AWS_SECRET';

const toBuf = (d: SourceData): Buffer =>
  typeof d === 'string' ? Buffer.from(d) : ArrayBuffer.isView(d) ? Buffer.from(d.buffer, d.byteOffset, d.byteLength) : Buffer.from(d as ArrayBuffer);

class Sha256 implements Checksum {
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

/** An AWS Encrypt body of the native encrypt's size: 32-byte plaintext, a small encryption context. */
export function encryptBody(keyId: string): string {
  return JSON.stringify({ KeyId: keyId, Plaintext: randomBytes(32).toString('base64'), EncryptionContext: { app: 'bench' } });
}

/** Headers of one signed awsJson1_1 POST / for `operation` (service kms). */
export async function signedHeaders(port: number, operation: string, body: string, secret: string): Promise<Record<string, string>> {
  const signer = new SignatureV4({
    service: 'kms',
    region: AWS_REGION,
    credentials: { accessKeyId: AWS_ACCESS_KEY_ID, secretAccessKey: secret },
    sha256: Sha256,
  });
  const headers = { host: `127.0.0.1:${port}`, 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `TrentService.${operation}` };
  const signed = await signer.sign({ method: 'POST', protocol: 'http:', hostname: '127.0.0.1', port, path: '/', query: {}, headers, body });
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(signed.headers)) out[k.toLowerCase()] = String(v);
  return out;
}
