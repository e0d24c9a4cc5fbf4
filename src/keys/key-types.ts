import type { HashName } from '../token/constants.js';
import type { TokenKeySpec } from '../token/templates.js';

/** The contract's key types and what each can do. */
export type KeyFamily = 'aes' | 'chacha20' | 'hmac' | 'ed25519' | 'ecdsa' | 'rsa';

export interface KeyTypeInfo {
  family: KeyFamily;
  token: TokenKeySpec;
  /** HMAC hash, or the default signing hash for ECDSA/RSA. */
  hash?: Exclude<HashName, 'SHA1'>;
  /** Length of the raw material on import (AES/HMAC: bytes). */
  materialBytes?: number[];
}

const KEY_TYPE_TABLE = {
  'aes256-gcm96': { family: 'aes', token: { kind: 'aes', bytes: 32 }, materialBytes: [32] },
  'aes128-gcm96': { family: 'aes', token: { kind: 'aes', bytes: 16 }, materialBytes: [16] },
  'chacha20-poly1305': { family: 'chacha20', token: { kind: 'chacha20' }, materialBytes: [32] },
  hmac: { family: 'hmac', token: { kind: 'hmac', bytes: 32 }, hash: 'SHA256' },
  'hmac-sha256': { family: 'hmac', token: { kind: 'hmac', bytes: 32 }, hash: 'SHA256' },
  'hmac-sha384': { family: 'hmac', token: { kind: 'hmac', bytes: 48 }, hash: 'SHA384' },
  'hmac-sha512': { family: 'hmac', token: { kind: 'hmac', bytes: 64 }, hash: 'SHA512' },
  ed25519: { family: 'ed25519', token: { kind: 'ed25519' } },
  'ecdsa-p256': { family: 'ecdsa', token: { kind: 'ec', curve: 'P-256' }, hash: 'SHA256' },
  'ecdsa-p384': { family: 'ecdsa', token: { kind: 'ec', curve: 'P-384' }, hash: 'SHA384' },
  'ecdsa-p521': { family: 'ecdsa', token: { kind: 'ec', curve: 'P-521' }, hash: 'SHA512' },
  'rsa-2048': { family: 'rsa', token: { kind: 'rsa', bits: 2048 }, hash: 'SHA256' },
  'rsa-3072': { family: 'rsa', token: { kind: 'rsa', bits: 3072 }, hash: 'SHA256' },
  'rsa-4096': { family: 'rsa', token: { kind: 'rsa', bits: 4096 }, hash: 'SHA256' },
} as const satisfies Record<string, KeyTypeInfo>;

export type KeyType = keyof typeof KEY_TYPE_TABLE;
export const KEY_TYPES: Record<KeyType, KeyTypeInfo> = KEY_TYPE_TABLE;
export const KEY_TYPE_NAMES = Object.keys(KEY_TYPES) as [KeyType, ...KeyType[]];


export const isAsymmetric = (t: KeyType) => ['ed25519', 'ecdsa', 'rsa'].includes(KEY_TYPES[t].family);
