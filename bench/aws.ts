/**
 * AWS KMS API request bodies and SigV4 signing for the bench (AWS's own signer with a
 * node:crypto SHA-256, as bench/xks.ts). A signed request is valid for 5 minutes, so one
 * request signed right before a run is replayed by every autocannon connection: signing is the
 * client's cost; kmsd still verifies every request.
 */
import { randomBytes } from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256 } from './xks.js';

export const AWS_REGION = 'us-east-1';
export const AWS_ACCESS_KEY_ID = 'AKIABENCHKMSD0000001';
export const AWS_SECRET_ENV = 'KMSD_BENCH_AWS_SECRET';

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
