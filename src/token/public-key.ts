import { createPublicKey, type KeyObject } from 'node:crypto';
import type { PublicKeyAttrs } from './region-token.js';
import { CURVE_OIDS } from './constants.js';

const JWK_CURVE: Record<string, { crv: string; size: number }> = {
  [CURVE_OIDS['P-256'].toString('hex')]: { crv: 'P-256', size: 32 },
  [CURVE_OIDS['P-384'].toString('hex')]: { crv: 'P-384', size: 48 },
  [CURVE_OIDS['P-521'].toString('hex')]: { crv: 'P-521', size: 66 },
};
const ED25519 = CURVE_OIDS.Ed25519.toString('hex');

/** Strips the DER OCTET STRING around CKA_EC_POINT (SoftHSM2 wraps it, as PKCS#11 says). */
function unwrapOctetString(p: Buffer): Buffer {
  if (p[0] !== 0x04) return p;
  let len = p[1]!;
  let off = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    len = p.readUIntBE(2, n);
    off = 2 + n;
  }
  return off + len === p.length ? p.subarray(off) : p;
}

/** The token's public key attributes as a node:crypto KeyObject (via JWK, no hand-made ASN.1). */
export function publicKeyObject(a: PublicKeyAttrs): KeyObject {
  if (a.kind === 'rsa') return rsaPublicKeyObject(a);
  const point = unwrapOctetString(a.ecPoint);
  const params = a.ecParams.toString('hex');
  if (params === ED25519 || params === '130c656477617264733235353139' /* PrintableString "edwards25519" */)
    return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: point.toString('base64url') }, format: 'jwk' });
  const c = JWK_CURVE[params];
  if (!c) throw new Error(`unknown curve ${params}`);
  return createPublicKey({
    key: {
      kty: 'EC',
      crv: c.crv,
      x: point.subarray(1, 1 + c.size).toString('base64url'),
      y: point.subarray(1 + c.size).toString('base64url'),
    },
    format: 'jwk',
  });
}

export function rsaPublicKeyObject(a: PublicKeyAttrs): KeyObject {
  if (a.kind !== 'rsa') throw new Error('not an RSA key');
  return createPublicKey({
    key: { kty: 'RSA', n: a.modulus.toString('base64url'), e: a.publicExponent.toString('base64url') },
    format: 'jwk',
  });
}

export const spkiPem = (k: KeyObject) => k.export({ type: 'spki', format: 'pem' }) as string;
