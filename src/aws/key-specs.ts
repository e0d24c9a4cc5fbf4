import type { KeyType } from '../keys/key-types.js';

/** AWS KeyUsage values kmsd can serve. */
export type KeyUsage = 'ENCRYPT_DECRYPT' | 'SIGN_VERIFY' | 'GENERATE_VERIFY_MAC';

/** One AWS KeySpec: the kmsd key type behind it, the usages it allows (first = default) and its algorithms. */
export interface AwsKeySpec {
  keyType: KeyType;
  usages: KeyUsage[];
  encryptionAlgorithms?: string[];
  signingAlgorithms?: string[];
  macAlgorithms?: string[];
}

const RSA_SIGNING = ['RSASSA_PSS_SHA_256', 'RSASSA_PSS_SHA_384', 'RSASSA_PSS_SHA_512', 'RSASSA_PKCS1_V1_5_SHA_256', 'RSASSA_PKCS1_V1_5_SHA_384', 'RSASSA_PKCS1_V1_5_SHA_512'];
const RSA_ENCRYPTION = ['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256'];

/** The contract's key spec table (API.md "Key specs"); any other spec is UnsupportedOperationException. */
export const KEY_SPECS: Record<string, AwsKeySpec> = {
  SYMMETRIC_DEFAULT: { keyType: 'aes256-gcm96', usages: ['ENCRYPT_DECRYPT'], encryptionAlgorithms: ['SYMMETRIC_DEFAULT'] },
  HMAC_256: { keyType: 'hmac-sha256', usages: ['GENERATE_VERIFY_MAC'], macAlgorithms: ['HMAC_SHA_256'] },
  HMAC_384: { keyType: 'hmac-sha384', usages: ['GENERATE_VERIFY_MAC'], macAlgorithms: ['HMAC_SHA_384'] },
  HMAC_512: { keyType: 'hmac-sha512', usages: ['GENERATE_VERIFY_MAC'], macAlgorithms: ['HMAC_SHA_512'] },
  RSA_2048: { keyType: 'rsa-2048', usages: ['ENCRYPT_DECRYPT', 'SIGN_VERIFY'], encryptionAlgorithms: RSA_ENCRYPTION, signingAlgorithms: RSA_SIGNING },
  RSA_3072: { keyType: 'rsa-3072', usages: ['ENCRYPT_DECRYPT', 'SIGN_VERIFY'], encryptionAlgorithms: RSA_ENCRYPTION, signingAlgorithms: RSA_SIGNING },
  RSA_4096: { keyType: 'rsa-4096', usages: ['ENCRYPT_DECRYPT', 'SIGN_VERIFY'], encryptionAlgorithms: RSA_ENCRYPTION, signingAlgorithms: RSA_SIGNING },
  ECC_NIST_P256: { keyType: 'ecdsa-p256', usages: ['SIGN_VERIFY'], signingAlgorithms: ['ECDSA_SHA_256'] },
  ECC_NIST_P384: { keyType: 'ecdsa-p384', usages: ['SIGN_VERIFY'], signingAlgorithms: ['ECDSA_SHA_384'] },
  ECC_NIST_P521: { keyType: 'ecdsa-p521', usages: ['SIGN_VERIFY'], signingAlgorithms: ['ECDSA_SHA_512'] },
  ECC_NIST_EDWARDS25519: { keyType: 'ed25519', usages: ['SIGN_VERIFY'], signingAlgorithms: ['ED25519_SHA_512'] },
};

/**
 * The AWS view of a kmsd key type, for keys made through the native API (no AWS attributes
 * stored): the spec, and the usage AWS would give it (RSA keys made natively sign and verify).
 */
export const SPEC_OF_KEY_TYPE: Record<KeyType, { keySpec: string; keyUsage: KeyUsage } | undefined> = {
  'aes256-gcm96': { keySpec: 'SYMMETRIC_DEFAULT', keyUsage: 'ENCRYPT_DECRYPT' },
  'aes128-gcm96': undefined,
  'chacha20-poly1305': undefined,
  hmac: { keySpec: 'HMAC_256', keyUsage: 'GENERATE_VERIFY_MAC' },
  'hmac-sha256': { keySpec: 'HMAC_256', keyUsage: 'GENERATE_VERIFY_MAC' },
  'hmac-sha384': { keySpec: 'HMAC_384', keyUsage: 'GENERATE_VERIFY_MAC' },
  'hmac-sha512': { keySpec: 'HMAC_512', keyUsage: 'GENERATE_VERIFY_MAC' },
  ed25519: { keySpec: 'ECC_NIST_EDWARDS25519', keyUsage: 'SIGN_VERIFY' },
  'ecdsa-p256': { keySpec: 'ECC_NIST_P256', keyUsage: 'SIGN_VERIFY' },
  'ecdsa-p384': { keySpec: 'ECC_NIST_P384', keyUsage: 'SIGN_VERIFY' },
  'ecdsa-p521': { keySpec: 'ECC_NIST_P521', keyUsage: 'SIGN_VERIFY' },
  'rsa-2048': { keySpec: 'RSA_2048', keyUsage: 'SIGN_VERIFY' },
  'rsa-3072': { keySpec: 'RSA_3072', keyUsage: 'SIGN_VERIFY' },
  'rsa-4096': { keySpec: 'RSA_4096', keyUsage: 'SIGN_VERIFY' },
};

/** AWS SigningAlgorithm → the native sign request's hash and RSA padding. */
export const SIGNING_ALGORITHMS: Record<string, { hash?: 'SHA256' | 'SHA384' | 'SHA512'; rsa?: 'pss' | 'pkcs1v15' }> = {
  RSASSA_PSS_SHA_256: { hash: 'SHA256', rsa: 'pss' },
  RSASSA_PSS_SHA_384: { hash: 'SHA384', rsa: 'pss' },
  RSASSA_PSS_SHA_512: { hash: 'SHA512', rsa: 'pss' },
  RSASSA_PKCS1_V1_5_SHA_256: { hash: 'SHA256', rsa: 'pkcs1v15' },
  RSASSA_PKCS1_V1_5_SHA_384: { hash: 'SHA384', rsa: 'pkcs1v15' },
  RSASSA_PKCS1_V1_5_SHA_512: { hash: 'SHA512', rsa: 'pkcs1v15' },
  ECDSA_SHA_256: { hash: 'SHA256' },
  ECDSA_SHA_384: { hash: 'SHA384' },
  ECDSA_SHA_512: { hash: 'SHA512' },
  ED25519_SHA_512: {},
};

/** AWS MacAlgorithm → the HMAC key type family's hash. */
export const MAC_ALGORITHMS: Record<string, 'SHA256' | 'SHA384' | 'SHA512'> = {
  HMAC_SHA_256: 'SHA256',
  HMAC_SHA_384: 'SHA384',
  HMAC_SHA_512: 'SHA512',
};
