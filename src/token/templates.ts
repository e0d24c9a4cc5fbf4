import pkcs11js from 'pkcs11js';
import { CKK_CHACHA20, CKK_EC_EDWARDS, CKM_CHACHA20_KEY_GEN, CKM_CHACHA20_POLY1305, CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA, CURVE_OIDS, type CurveName } from './constants.js';

/** What the token layer needs to know to create a key; the contract's key types map onto these in keys/. */
export type TokenKeySpec =
  | { kind: 'aes'; bytes: 16 | 32 }
  | { kind: 'chacha20' }
  | { kind: 'hmac'; bytes: number }
  | { kind: 'ec'; curve: Exclude<CurveName, 'Ed25519'> }
  | { kind: 'ed25519' }
  | { kind: 'rsa'; bits: 2048 | 3072 | 4096 };

export interface ObjectOptions {
  ckaId: Buffer;
  label: string;
  /** Only keys created with exportAllowed: they still stay CKA_SENSITIVE and leave the token only wrapped. */
  extractable: boolean;
  /** false for throwaway session objects (probes, ephemeral unwrap keys). */
  token?: boolean;
}

type Template = pkcs11js.Template;

/** Attributes every private or secret kmsd object carries (API.md "Every version of every key…"). */
function protectedAttrs(o: ObjectOptions): Template {
  return [
    { type: pkcs11js.CKA_TOKEN, value: o.token ?? true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: o.extractable },
    { type: pkcs11js.CKA_ID, value: o.ckaId },
    { type: pkcs11js.CKA_LABEL, value: o.label },
  ];
}

function publicAttrs(o: ObjectOptions): Template {
  return [
    { type: pkcs11js.CKA_TOKEN, value: o.token ?? true },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    { type: pkcs11js.CKA_ID, value: o.ckaId },
    { type: pkcs11js.CKA_LABEL, value: o.label },
  ];
}

export function secretKeyTemplate(spec: TokenKeySpec, o: ObjectOptions): { mechanism: number; template: Template } {
  const base = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY }, ...protectedAttrs(o)];
  switch (spec.kind) {
    case 'aes':
      return {
        mechanism: pkcs11js.CKM_AES_KEY_GEN,
        template: [
          ...base,
          { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
          { type: pkcs11js.CKA_VALUE_LEN, value: spec.bytes },
          { type: pkcs11js.CKA_ENCRYPT, value: true },
          { type: pkcs11js.CKA_DECRYPT, value: true },
        ],
      };
    case 'chacha20':
      return {
        mechanism: CKM_CHACHA20_KEY_GEN,
        template: [
          ...base,
          { type: pkcs11js.CKA_KEY_TYPE, value: CKK_CHACHA20 },
          { type: pkcs11js.CKA_ENCRYPT, value: true },
          { type: pkcs11js.CKA_DECRYPT, value: true },
        ],
      };
    case 'hmac':
      return {
        mechanism: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN,
        template: [
          ...base,
          { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_GENERIC_SECRET },
          { type: pkcs11js.CKA_VALUE_LEN, value: spec.bytes },
          { type: pkcs11js.CKA_SIGN, value: true },
          { type: pkcs11js.CKA_VERIFY, value: true },
        ],
      };
    default:
      throw new Error(`not a secret key spec: ${spec.kind}`);
  }
}

export function keyPairTemplate(
  spec: TokenKeySpec,
  o: ObjectOptions,
): { mechanism: number; publicTemplate: Template; privateTemplate: Template } {
  const priv = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, ...protectedAttrs(o)];
  const pub = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY }, ...publicAttrs(o)];
  switch (spec.kind) {
    case 'ec':
    case 'ed25519': {
      const ed = spec.kind === 'ed25519';
      const keyType = ed ? CKK_EC_EDWARDS : pkcs11js.CKK_EC;
      return {
        mechanism: ed ? CKM_EC_EDWARDS_KEY_PAIR_GEN : pkcs11js.CKM_EC_KEY_PAIR_GEN,
        publicTemplate: [
          ...pub,
          { type: pkcs11js.CKA_KEY_TYPE, value: keyType },
          { type: pkcs11js.CKA_EC_PARAMS, value: CURVE_OIDS[ed ? 'Ed25519' : spec.curve] },
          { type: pkcs11js.CKA_VERIFY, value: true },
        ],
        privateTemplate: [...priv, { type: pkcs11js.CKA_KEY_TYPE, value: keyType }, { type: pkcs11js.CKA_SIGN, value: true }],
      };
    }
    case 'rsa':
      return {
        mechanism: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN,
        publicTemplate: [
          ...pub,
          { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
          { type: pkcs11js.CKA_MODULUS_BITS, value: spec.bits },
          { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
          { type: pkcs11js.CKA_VERIFY, value: true },
          { type: pkcs11js.CKA_ENCRYPT, value: true },
          { type: pkcs11js.CKA_WRAP, value: true },
        ],
        privateTemplate: [
          ...priv,
          { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
          { type: pkcs11js.CKA_SIGN, value: true },
          { type: pkcs11js.CKA_DECRYPT, value: true },
        ],
      };
    default:
      throw new Error(`not a key pair spec: ${spec.kind}`);
  }
}

/** Template for a key unwrapped into the token (BYOK): same protection as a generated one. */
export function unwrapTemplate(spec: TokenKeySpec, o: ObjectOptions): Template {
  switch (spec.kind) {
    case 'aes':
    case 'chacha20':
    case 'hmac': {
      const t = secretKeyTemplate(spec, o).template;
      // CKA_VALUE_LEN comes from the wrapped material, not the template.
      return t.filter((a) => a.type !== pkcs11js.CKA_VALUE_LEN);
    }
    case 'ec':
    case 'ed25519':
    case 'rsa':
      return keyPairTemplate(spec, o).privateTemplate;
  }
}

/**
 * An AES-256 session key that can only wrap: the transport key of BYOK and export, on kmsd's
 * token or (kmsctl byok) on a source token. Sensitive unless `sensitive: false`, which only
 * break-glass plaintext export asks for, because it reads the key's value back.
 */
export function ephemeralWrapKeyTemplate(o: { extractable: boolean; sensitive?: boolean }): Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: o.sensitive ?? true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: o.extractable },
    { type: pkcs11js.CKA_WRAP, value: true },
    { type: pkcs11js.CKA_ENCRYPT, value: false },
    { type: pkcs11js.CKA_DECRYPT, value: false },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
  ];
}

/** An RSA pair for unwrapping only (regional wrapping key, import tokens). */
export function unwrapKeyPairTemplate(bits: number, o: ObjectOptions) {
  return {
    mechanism: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN,
    publicTemplate: [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
      ...publicAttrs(o),
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
      { type: pkcs11js.CKA_MODULUS_BITS, value: bits },
      { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
      { type: pkcs11js.CKA_WRAP, value: true },
      { type: pkcs11js.CKA_ENCRYPT, value: true },
    ],
    privateTemplate: [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      ...protectedAttrs({ ...o, extractable: false }),
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
      { type: pkcs11js.CKA_UNWRAP, value: true },
      { type: pkcs11js.CKA_DECRYPT, value: false },
      { type: pkcs11js.CKA_SIGN, value: false },
    ],
  };
}

/**
 * The mechanisms a key of this spec needs from the token, by name: the generation and the
 * operation kmsd runs with it (checked against the token's mechanism list before creating a key,
 * so a region whose token lacks them — e.g. AES-GCM through p11-kit 0.24 — refuses the key type
 * instead of creating a key it cannot use).
 */
export function mechanismsFor(spec: TokenKeySpec): { mechanism: number; name: string }[] {
  switch (spec.kind) {
    case 'aes':
      return [
        { mechanism: pkcs11js.CKM_AES_KEY_GEN, name: 'CKM_AES_KEY_GEN' },
        { mechanism: pkcs11js.CKM_AES_GCM, name: 'CKM_AES_GCM' },
      ];
    case 'chacha20':
      return [
        { mechanism: CKM_CHACHA20_KEY_GEN, name: 'CKM_CHACHA20_KEY_GEN' },
        { mechanism: CKM_CHACHA20_POLY1305, name: 'CKM_CHACHA20_POLY1305' },
      ];
    case 'hmac':
      return [{ mechanism: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN, name: 'CKM_GENERIC_SECRET_KEY_GEN' }];
    case 'ec':
      return [
        { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN, name: 'CKM_EC_KEY_PAIR_GEN' },
        { mechanism: pkcs11js.CKM_ECDSA, name: 'CKM_ECDSA' },
      ];
    case 'ed25519':
      return [
        { mechanism: CKM_EC_EDWARDS_KEY_PAIR_GEN, name: 'CKM_EC_EDWARDS_KEY_PAIR_GEN' },
        { mechanism: CKM_EDDSA, name: 'CKM_EDDSA' },
      ];
    case 'rsa':
      return [{ mechanism: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN, name: 'CKM_RSA_PKCS_KEY_PAIR_GEN' }];
  }
}
