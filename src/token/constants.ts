import pkcs11js from 'pkcs11js';

/** Values of PKCS#11 v3.0 that pkcs11js 2.1.7 does not export. */
export const CKK_EC_EDWARDS = 0x40;
export const CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055;
export const CKM_EDDSA = 0x1057;
export const CKM_CHACHA20_POLY1305 = 0x4021;
export const CKM_CHACHA20_KEY_GEN = 0x1225;
export const CKK_CHACHA20 = 0x33;

/** DER OIDs (CKA_EC_PARAMS) for the curves kmsd uses. */
export const CURVE_OIDS = {
  'P-256': Buffer.from('06082a8648ce3d030107', 'hex'),
  'P-384': Buffer.from('06052b81040022', 'hex'),
  'P-521': Buffer.from('06052b81040023', 'hex'),
  Ed25519: Buffer.from('06032b6570', 'hex'),
} as const;
export type CurveName = keyof typeof CURVE_OIDS;

export type HashName = 'SHA1' | 'SHA256' | 'SHA384' | 'SHA512';

/** Digest mechanism and MGF1 value per hash (for OAEP and PSS parameters). */
export const HASH_MECH: Record<HashName, { hashAlg: number; mgf: number; bytes: number }> = {
  SHA1: { hashAlg: pkcs11js.CKM_SHA_1, mgf: pkcs11js.CKG_MGF1_SHA1, bytes: 20 },
  SHA256: { hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, bytes: 32 },
  SHA384: { hashAlg: pkcs11js.CKM_SHA384, mgf: pkcs11js.CKG_MGF1_SHA384, bytes: 48 },
  SHA512: { hashAlg: pkcs11js.CKM_SHA512, mgf: pkcs11js.CKG_MGF1_SHA512, bytes: 64 },
};

export const HMAC_MECH: Record<Exclude<HashName, 'SHA1'>, number> = {
  SHA256: pkcs11js.CKM_SHA256_HMAC,
  SHA384: pkcs11js.CKM_SHA384_HMAC,
  SHA512: pkcs11js.CKM_SHA512_HMAC,
};

export const PSS_MECH: Record<Exclude<HashName, 'SHA1'>, number> = {
  SHA256: pkcs11js.CKM_SHA256_RSA_PKCS_PSS,
  SHA384: pkcs11js.CKM_SHA384_RSA_PKCS_PSS,
  SHA512: pkcs11js.CKM_SHA512_RSA_PKCS_PSS,
};

export const PKCS1_MECH: Record<Exclude<HashName, 'SHA1'>, number> = {
  SHA256: pkcs11js.CKM_SHA256_RSA_PKCS,
  SHA384: pkcs11js.CKM_SHA384_RSA_PKCS,
  SHA512: pkcs11js.CKM_SHA512_RSA_PKCS,
};
