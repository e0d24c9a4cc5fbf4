import { randomBytes } from 'node:crypto';
import { unsupported } from '../errors.js';
import type { HashName } from '../token/constants.js';

/** The wrapping algorithms of the contract's import parameters (AWS names). */
export type WrappingAlgorithm = 'RSA_OAEP_SHA1' | 'RSA_OAEP_SHA256' | 'RSA_AES_KEY_WRAP_SHA1' | 'RSA_AES_KEY_WRAP_SHA256';

export interface WrappingScheme {
  /** RSA-OAEP of the material itself, or the two-part RSA-OAEP(ephemeral AES key) ‖ AES-KWP(material). */
  twoPart: boolean;
  hash: HashName;
}

export function parseWrappingAlgorithm(a: WrappingAlgorithm): WrappingScheme {
  const m = /^RSA_(OAEP|AES_KEY_WRAP)_(SHA1|SHA256)$/.exec(a)!;
  return { twoPart: m[1] === 'AES_KEY_WRAP', hash: m[2] as HashName };
}

/**
 * RSA-OAEP runs inside the token, so the hashes on offer are the ones the region's token was
 * probed to unwrap with (SoftHSM2 2.6.1: SHA-1 only). Anything else is refused, never emulated.
 */
export function requireOaepHash(supported: HashName[], asked: HashName | undefined, region: string, field: string): HashName {
  const hash = asked ?? supported[0];
  if (!hash) throw unsupported(`${field}: the token of region ${region} cannot unwrap with RSA-OAEP at all`);
  if (!supported.includes(hash))
    throw unsupported(`${field}: ${asked} is not available; the token of region ${region} does RSA-OAEP with ${supported.join(', ')} only`);
  return hash;
}

/** Import tokens are 24 h on the daemon clock (the testing clock moves them too). */
export const IMPORT_TOKEN_TTL_MS = 24 * 3600 * 1000;
export const IMPORT_TOKEN_BITS = 256;
export const IMPORT_WRAPPING_BITS = 3072;
export const REGIONAL_WRAPPING_BITS = 4096;

/**
 * CKA_ID prefixes of BYOK's own token objects. They differ from the key-version prefix
 * (`kmsd/k/`) on purpose: key reconciliation must never mistake them for orphaned versions.
 * The `<ms>.<pid>` part lets a sweep tell a pair another live process is recording from a leftover.
 */
export const WRAPPING_KEY_PREFIX = 'kmsd/w/';
export const IMPORT_KEY_PREFIX = 'kmsd/i/';

export function newByokObjectId(prefix: string, region?: string): string {
  return `${prefix}${region ? `${region}/` : ''}${Date.now()}.${process.pid}.${randomBytes(4).toString('hex')}`;
}

export function newImportToken(): string {
  return `kmsd-import-${randomBytes(IMPORT_TOKEN_BITS / 8).toString('base64url')}`;
}
