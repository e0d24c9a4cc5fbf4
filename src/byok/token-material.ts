import { createDecipheriv, createECDH, createHash, createPublicKey, ECDH, randomBytes, verify, type KeyObject } from 'node:crypto';
import * as asn1js from 'asn1js';
import pkcs11js from 'pkcs11js';
import { unsupported, validation } from '../errors.js';
import { KEY_TYPES, type KeyType } from '../keys/key-types.js';
import { CURVE_OIDS, type CurveName, type HashName } from '../token/constants.js';
import { TokenError } from '../token/errors.js';
import { rsaPublicKeyObject } from '../token/public-key.js';
import { oaep, type RegionToken } from '../token/region-token.js';
import { ephemeralWrapKeyTemplate, keyPairTemplate, unwrapTemplate, type ObjectOptions, type TokenKeySpec } from '../token/templates.js';

const P = pkcs11js;
type Handle = pkcs11js.Handle;
type Template = pkcs11js.Template;

/**
 * Unwraps the caller's material once more, with this template, into a new object. Every
 * object made from the material comes out of a C_UnwrapKey: the material itself is never
 * in this process.
 */
export type Unwrapper = (template: Template) => Promise<Handle>;

const KWP: pkcs11js.Mechanism = { mechanism: P.CKM_AES_KEY_WRAP_PAD };
/** RFC 5649 alternative initial value (what OpenSSL's id-aes256-wrap-pad and the token use). */
const KWP_AIV = Buffer.from('A65959A6', 'hex');
const AES_KEY_BYTES = [16, 24, 32];

export const ED25519_IMPORT_REFUSED =
  'keyType ed25519 cannot be imported: SoftHSM2 2.6.1 fails to unwrap Ed25519 PKCS#8 (CKR_FUNCTION_FAILED, measured), and PKCS#11 ' +
  'offers no way to obtain the public key of an unwrapped Edwards private key, so verify and public-key could not work';

/** Attributes of a throwaway session object: never on the token, private, sensitive. */
function sessionAttrs(extractable: boolean): Template {
  return [
    { type: P.CKA_TOKEN, value: false },
    { type: P.CKA_PRIVATE, value: true },
    { type: P.CKA_SENSITIVE, value: true },
    { type: P.CKA_EXTRACTABLE, value: extractable },
  ];
}

function sessionSecret(keyType: number, extractable: boolean, usage: Template = []): Template {
  return [{ type: P.CKA_CLASS, value: P.CKO_SECRET_KEY }, { type: P.CKA_KEY_TYPE, value: keyType }, ...sessionAttrs(extractable), ...usage];
}

/** An AES-256 session key made by the token's RNG, able to wrap (never to encrypt data). */
function ephemeralWrapKey(token: RegionToken, o: { extractable: boolean; sensitive?: boolean }): Promise<Handle> {
  return token.generateKeyRaw(P.CKM_AES_KEY_GEN, ephemeralWrapKeyTemplate(o));
}

/**
 * Runs a token step on caller-supplied bytes: whatever the token refuses (bad padding, wrong
 * key, not a PKCS#8 key of that type) is the caller's 400, naming the field; a token that is
 * down stays a 503.
 */
async function onMaterial<T>(field: string, step: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    // Wait for the object index re-read (index being built, region drained), then run again.
    if (e instanceof TokenError && e.rereading) throw e;
    if (e instanceof TokenError && e.kind === 'staleHandle')
      // The unwrapping key itself is gone (an import key retired meanwhile): not the material's fault.
      throw validation(`${field}: ${step} failed: the unwrapping key is no longer on the token (${e.message})`);
    if (e instanceof TokenError && e.kind !== 'unavailable') {
      const ckr = /CKR_[A-Z_]+|0x[0-9a-f]+$/.exec(e.message)?.[0] ?? e.message;
      throw validation(`${field}: ${step} failed in the token (${ckr}): wrong wrapping key or hash, corrupted data, or material of another key type`);
    }
    throw e;
  }
}

/**
 * The two-part format: RSA-OAEP(hash) of an ephemeral AES key ‖ AES-KWP (RFC 5649) of the
 * material. SoftHSM2 has no CKM_RSA_AES_KEY_WRAP, so it is done in two token steps: the
 * ephemeral key is OAEP-unwrapped into a session object (sensitive, non-extractable), the
 * material is KWP-unwrapped with it by `body`, and the ephemeral key is destroyed.
 */
export async function withTwoPartUnwrapper<T>(
  token: RegionToken,
  rsaCkaId: Buffer,
  modulusBytes: number,
  hash: HashName,
  blob: Buffer,
  field: string,
  body: (u: Unwrapper) => Promise<T>,
): Promise<T> {
  const kwpBytes = blob.length - modulusBytes;
  if (kwpBytes < 16 || kwpBytes % 8 !== 0)
    throw validation(
      `${field}: expected the RSA-OAEP part (${modulusBytes} bytes, the wrapping key's modulus length) followed by the AES key wrap ` +
        `with padding (RFC 5649) part (a multiple of 8 bytes, at least 16); got ${blob.length} bytes in all`,
    );
  const ephemeral = await onMaterial(field, `RSA-OAEP (${hash}) unwrap of the ephemeral AES key`, () =>
    token.unwrap({ ckaId: rsaCkaId, cls: 'private' }, oaep(hash), blob.subarray(0, modulusBytes), [
      ...sessionSecret(P.CKK_AES, false, [
        { type: P.CKA_UNWRAP, value: true },
        { type: P.CKA_WRAP, value: false },
        { type: P.CKA_ENCRYPT, value: false },
        { type: P.CKA_DECRYPT, value: false },
      ]),
    ]),
  );
  try {
    const kwpPart = blob.subarray(modulusBytes);
    return await body((t) => onMaterial(field, 'AES key unwrap (RFC 5649) of the key material', () => token.unwrap({ handle: ephemeral }, KWP, kwpPart, t)));
  } finally {
    token.destroyHandle(ephemeral);
  }
}

/** RSA_OAEP_*: the material itself is the OAEP ciphertext, unwrapped straight into token objects. */
export function directUnwrapper(token: RegionToken, rsaCkaId: Buffer, modulusBytes: number, hash: HashName, wrapped: Buffer, field: string): Unwrapper {
  if (wrapped.length !== modulusBytes)
    throw validation(`${field}: an RSA-OAEP ciphertext under this import key is ${modulusBytes} bytes; got ${wrapped.length}`);
  return (t) =>
    onMaterial(field, `RSA-OAEP (${hash}) unwrap of the key material`, () =>
      token.unwrap({ ckaId: rsaCkaId, cls: 'private' }, oaep(hash), wrapped, t),
    );
}

/**
 * Puts the caller's material into the token as a version of `keyType` under `target.ckaId`,
 * with the same protection as a generated key (unwrapTemplate), after checking it fits the
 * type. Asymmetric keys also get their public half as a token object with the same CKA_ID,
 * derived from the private object inside the token. On failure nothing is left behind.
 */
export async function materialize(token: RegionToken, keyType: KeyType, target: ObjectOptions, u: Unwrapper, field: string): Promise<void> {
  const info = KEY_TYPES[keyType];
  const spec = info.token;
  switch (info.family) {
    case 'aes':
    case 'chacha20':
    case 'hmac': {
      checkSecretLength(keyType, await secretLength(token, u), field);
      token.cacheHandle(target.ckaId, 'secret', await u(unwrapTemplate(spec, target)));
      return;
    }
    case 'rsa':
    case 'ecdsa': {
      const priv = await u(unwrapTemplate(spec, target));
      token.cacheHandle(target.ckaId, 'private', priv);
      try {
        const pub =
          spec.kind === 'rsa'
            ? rsaPublicTemplate(token, priv, spec, target, field)
            : await ecPublicTemplate(token, u, priv, spec as Extract<TokenKeySpec, { kind: 'ec' }>, target, field);
        token.cacheHandle(target.ckaId, 'public', token.createObject(pub));
      } catch (e) {
        // If the token is down now, the object carries a key-version CKA_ID no row names:
        // key reconciliation destroys it once this process is gone or 10 minutes have passed.
        await token.destroy(target.ckaId).catch(() => undefined);
        throw e;
      }
      return;
    }
    case 'ed25519':
      throw unsupported(ED25519_IMPORT_REFUSED);
  }
}

/**
 * Length of the material, learnt inside the token. SoftHSM2 leaves CKA_VALUE_LEN at 0 on
 * unwrapped keys and refuses it in an unwrap template (CKR_ATTRIBUTE_READ_ONLY, measured), so
 * the length is read off a wrap: an extractable session copy is AES-KWP-wrapped under a
 * session key nobody can read, whose output (discarded) is 8 + the length rounded up to 8.
 * Inside that 8-byte window, AES accepts only a 16/24/32-byte key as a wrapping key, which
 * pins the length exactly when the top of the window is one of those.
 */
async function secretLength(token: RegionToken, u: Unwrapper): Promise<{ min: number; max: number }> {
  const kek = await ephemeralWrapKey(token, { extractable: false });
  try {
    const copy = await u(sessionSecret(P.CKK_GENERIC_SECRET, true));
    try {
      const wrapped = await token.wrap(KWP, kek, copy);
      const top = wrapped.length - 8;
      wrapped.fill(0);
      if (!AES_KEY_BYTES.includes(top)) return { min: top - 7, max: top };
      const asAes = await u(sessionSecret(P.CKK_AES, false, [{ type: P.CKA_WRAP, value: true }]));
      try {
        (await token.wrap(KWP, asAes, copy)).fill(0);
        return { min: top, max: top };
      } catch (e) {
        if (e instanceof TokenError && e.kind === 'unavailable') throw e;
        return { min: top - 7, max: top - 1 };
      } finally {
        token.destroyHandle(asAes);
      }
    } finally {
      token.destroyHandle(copy);
    }
  } finally {
    token.destroyHandle(kek);
  }
}

function checkSecretLength(keyType: KeyType, len: { min: number; max: number }, field: string): void {
  const info = KEY_TYPES[keyType];
  const got = len.min === len.max ? `${len.min} bytes` : `${len.min} to ${len.max} bytes`;
  if (info.family === 'hmac') {
    if (len.min < 32) throw validation(`${field}: ${keyType} key material must be at least 32 bytes; the unwrapped material is ${got}`);
    return;
  }
  const want = info.materialBytes ?? [];
  if (len.min !== len.max || !want.includes(len.min))
    throw validation(`${field}: ${keyType} key material must be ${want.join(' or ')} bytes; the unwrapped material is ${got}`);
}

/** CKA_MODULUS and CKA_PUBLIC_EXPONENT are public attributes, readable on the private object. */
function rsaPublicTemplate(token: RegionToken, priv: Handle, spec: Extract<TokenKeySpec, { kind: 'rsa' }>, target: ObjectOptions, field: string): Template {
  const attrs = token.readPublicKeyByHandle(priv);
  if (attrs.kind !== 'rsa') throw validation(`${field}: the material is not an RSA key`);
  const bits = rsaPublicKeyObject(attrs).asymmetricKeyDetails?.modulusLength;
  if (bits !== spec.bits) throw validation(`${field}: the material is a ${bits}-bit RSA key, keyType needs ${spec.bits} bits`);
  const drop = new Set([P.CKA_MODULUS_BITS, P.CKA_PUBLIC_EXPONENT]); // MODULUS_BITS is generate-only (CKR_ATTRIBUTE_READ_ONLY on create)
  return [
    ...keyPairTemplate(spec, target).publicTemplate.filter((a) => !drop.has(a.type)),
    { type: P.CKA_MODULUS, value: attrs.modulus },
    { type: P.CKA_PUBLIC_EXPONENT, value: attrs.publicExponent },
  ];
}

const NODE_CURVE: Record<Exclude<CurveName, 'Ed25519'>, { name: string; bytes: number }> = {
  'P-256': { name: 'prime256v1', bytes: 32 },
  'P-384': { name: 'secp384r1', bytes: 48 },
  'P-521': { name: 'secp521r1', bytes: 66 },
};

async function ecPublicTemplate(
  token: RegionToken,
  u: Unwrapper,
  priv: Handle,
  spec: Extract<TokenKeySpec, { kind: 'ec' }>,
  target: ObjectOptions,
  field: string,
): Promise<Template> {
  const params = token.readAttributesByHandle(priv, [P.CKA_EC_PARAMS]).get(P.CKA_EC_PARAMS);
  if (!params?.equals(CURVE_OIDS[spec.curve])) throw validation(`${field}: the material is not a ${spec.curve} key`);
  const point = await ecPublicPoint(token, u, spec.curve, target.ckaId);
  // CKA_EC_POINT is the DER OCTET STRING of the uncompressed point (SoftHSM2 verifies nothing with the raw point, measured).
  return [...keyPairTemplate(spec, target).publicTemplate, { type: P.CKA_EC_POINT, value: Buffer.from(new asn1js.OctetString({ valueHex: point }).toBER()) }];
}

/**
 * The public point Q = d·G of an unwrapped EC private key. SoftHSM2 keeps no CKA_EC_POINT on
 * private objects, and the importer sends only PKCS#8, so the token computes it: ECDH of a
 * session copy of the key (the only object with CKA_DERIVE) with the generator G as the peer
 * gives x(d·G) = x(Q). x fixes Q up to the sign of y; the candidate that verifies a signature
 * made by the imported key itself is Q. Neither the scalar nor any secret leaves the token.
 */
async function ecPublicPoint(token: RegionToken, u: Unwrapper, curve: Exclude<CurveName, 'Ed25519'>, ckaId: Buffer): Promise<Buffer> {
  const c = NODE_CURVE[curve];
  const one = Buffer.alloc(c.bytes);
  one[c.bytes - 1] = 1;
  const ecdh = createECDH(c.name);
  ecdh.setPrivateKey(one);
  const generator = ecdh.getPublicKey(); // 1·G, uncompressed: node:crypto instead of a table of curve constants

  let x: Buffer;
  const copy = await u([
    { type: P.CKA_CLASS, value: P.CKO_PRIVATE_KEY },
    { type: P.CKA_KEY_TYPE, value: P.CKK_EC },
    ...sessionAttrs(false),
    { type: P.CKA_DERIVE, value: true },
    { type: P.CKA_SIGN, value: false },
  ]);
  try {
    const mech = { mechanism: P.CKM_ECDH1_DERIVE, parameter: { type: P.CK_PARAMS_EC_DH, kdf: P.CKD_NULL, publicData: generator } as pkcs11js.ECDH1 };
    const xObject = await token.deriveKey(mech, copy, [
      { type: P.CKA_CLASS, value: P.CKO_SECRET_KEY },
      { type: P.CKA_KEY_TYPE, value: P.CKK_GENERIC_SECRET },
      { type: P.CKA_TOKEN, value: false },
      // x(Q) is public information, so this one object may be read.
      { type: P.CKA_SENSITIVE, value: false },
      { type: P.CKA_EXTRACTABLE, value: true },
      { type: P.CKA_VALUE_LEN, value: c.bytes },
    ]);
    try {
      x = token.readAttributesByHandle(xObject, [P.CKA_VALUE]).get(P.CKA_VALUE)!;
    } finally {
      token.destroyHandle(xObject);
    }
  } finally {
    token.destroyHandle(copy);
  }

  const challenge = randomBytes(32);
  const signature = await token.sign(ckaId, { mechanism: P.CKM_ECDSA }, createHash('sha256').update(challenge).digest());
  for (const prefix of [0x02, 0x03]) {
    const point = ECDH.convertKey(Buffer.concat([Buffer.from([prefix]), x]), c.name, undefined, undefined, 'uncompressed') as Buffer;
    const key = createPublicKey({
      key: { kty: 'EC', crv: curve, x: point.subarray(1, 1 + c.bytes).toString('base64url'), y: point.subarray(1 + c.bytes).toString('base64url') },
      format: 'jwk',
    });
    if (verify('sha256', challenge, { key, dsaEncoding: 'ieee-p1363' }, signature)) return point;
  }
  throw new Error(`EC public key derivation for ${curve} found no point that verifies the key's own signature`);
}

// ---- export ---------------------------------------------------------------------------------

/**
 * Export under the caller's RSA key, all inside the token: the caller's public key becomes a
 * session object, an ephemeral extractable AES-256 key is generated there, C_WrapKey wraps it
 * with RSA-OAEP(hash) and wraps the key version with AES-KWP; the session objects are destroyed.
 */
export async function wrapForCaller(token: RegionToken, key: Handle, callerKey: KeyObject, hash: HashName): Promise<Buffer> {
  const jwk = callerKey.export({ format: 'jwk' });
  const callerObject = token.createObject([
    { type: P.CKA_CLASS, value: P.CKO_PUBLIC_KEY },
    { type: P.CKA_KEY_TYPE, value: P.CKK_RSA },
    { type: P.CKA_TOKEN, value: false },
    { type: P.CKA_PRIVATE, value: false },
    { type: P.CKA_MODULUS, value: Buffer.from(jwk.n!, 'base64url') },
    { type: P.CKA_PUBLIC_EXPONENT, value: Buffer.from(jwk.e!, 'base64url') },
    { type: P.CKA_WRAP, value: true },
    { type: P.CKA_ENCRYPT, value: false },
    { type: P.CKA_VERIFY, value: false },
  ]);
  try {
    const ephemeral = await ephemeralWrapKey(token, { extractable: true });
    try {
      const rsaPart = await token.wrap(oaep(hash), callerObject, ephemeral);
      const kwpPart = await token.wrap(KWP, ephemeral, key);
      return Buffer.concat([rsaPart, kwpPart]);
    } finally {
      token.destroyHandle(ephemeral);
    }
  } finally {
    token.destroyHandle(callerObject);
  }
}

/**
 * Plaintext export (only with export.allowPlaintext). kmsd's objects are CKA_SENSITIVE, so
 * their value cannot be read as an attribute: C_WrapKey is still the only way out. The key is
 * wrapped under an ephemeral non-sensitive session key, whose value is then read and used to
 * undo the RFC 5649 wrap in node:crypto — the one place where kmsd unwraps in software, and
 * only because the operator asked for plaintext.
 */
export async function exportPlaintext(token: RegionToken, key: Handle): Promise<Buffer> {
  const ephemeral = await ephemeralWrapKey(token, { extractable: true, sensitive: false });
  try {
    const wrapped = await token.wrap(KWP, ephemeral, key);
    const kek = token.readAttributesByHandle(ephemeral, [P.CKA_VALUE]).get(P.CKA_VALUE)!;
    try {
      const d = createDecipheriv('id-aes256-wrap-pad', kek, KWP_AIV);
      return Buffer.concat([d.update(wrapped), d.final()]);
    } finally {
      kek.fill(0);
    }
  } finally {
    token.destroyHandle(ephemeral);
  }
}
