import { invalidCiphertext } from '../errors.js';

/** `kms:v<N>:<base64>`: the one format for ciphertexts, signatures and MACs. */
const PATTERN = /^kms:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]*={0,2})$/;

export function formatVersioned(version: number, data: Buffer): string {
  return `kms:v${version}:${data.toString('base64')}`;
}

export function parseVersioned(s: unknown, field: string): { version: number; data: Buffer } {
  if (typeof s !== 'string') throw invalidCiphertext(`${field}: expected a string kms:v<N>:<base64>`);
  const m = PATTERN.exec(s);
  if (!m || m[2]!.length % 4 !== 0) throw invalidCiphertext(`${field}: not of the form kms:v<N>:<base64>`);
  return { version: Number(m[1]), data: Buffer.from(m[2]!, 'base64') };
}

const VERSION_PREFIX = /^kms:v([1-9][0-9]{0,8}):/;

/**
 * The version a `kms:v<N>:` string names, even when the rest is unusable (for the audit record
 * of a failed operation); undefined when there is no such prefix.
 */
export function namedVersion(s: unknown): string | undefined {
  return typeof s === 'string' ? VERSION_PREFIX.exec(s)?.[1] : undefined;
}

const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Strict standard base64 (the contract's encoding for every binary field). */
export function isBase64(s: string): boolean {
  return s.length % 4 === 0 && B64.test(s);
}
