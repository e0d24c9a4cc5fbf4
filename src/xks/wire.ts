import { createHash } from 'node:crypto';
import { xksInvalidCiphertext } from './errors.js';

/**
 * `ciphertextMetadata` kmsd returns with every XKS ciphertext (≤ 20 bytes, spec "Encrypt"):
 * byte 0 is the format (1 = AAD built with both lengths, as below), bytes 1-4 the kmsd key
 * version (uint32 big-endian). Decrypt reads the version back, so ciphertexts made before a
 * kmsd rotation still decrypt with the version that made them; the format byte lets a later
 * kmsd change how the AAD is built without orphaning old ciphertexts (spec's own advice).
 */
const METADATA_FORMAT_V1 = 1;
const METADATA_BYTES = 5;

export function encodeCiphertextMetadata(version: number): Buffer {
  const b = Buffer.alloc(METADATA_BYTES);
  b[0] = METADATA_FORMAT_V1;
  b.writeUInt32BE(version, 1);
  return b;
}

/** The key version inside metadata kmsd made; anything else is InvalidCiphertextException. */
export function decodeCiphertextMetadata(b: Buffer): number {
  if (b.length !== METADATA_BYTES || b[0] !== METADATA_FORMAT_V1)
    throw xksInvalidCiphertext('ciphertextMetadata was not made by this proxy or was modified');
  const version = b.readUInt32BE(1);
  if (version < 1) throw xksInvalidCiphertext('ciphertextMetadata names no key version');
  return version;
}

/** The longest AAD the 2-byte length prefix can describe. */
export const MAX_AAD_BYTES = 0xffff;

/**
 * The AAD handed to AES-GCM in the token: len16(AAD) ‖ AAD ‖ len8(metadata) ‖ metadata (spec
 * "Encrypt", ciphertextMetadata). The explicit lengths stop metadata passed as AAD (or the
 * reverse) from decrypting; the metadata inside the tag makes a tampered version fail.
 */
export function gcmAad(aad: Buffer, metadata: Buffer): Buffer {
  const out = Buffer.allocUnsafe(2 + aad.length + 1 + metadata.length);
  out.writeUInt16BE(aad.length, 0);
  aad.copy(out, 2);
  out[2 + aad.length] = metadata.length;
  metadata.copy(out, 3 + aad.length);
  return out;
}

/** ciphertextDataIntegrityValue: SHA-256(AAD ‖ metadata ‖ IV ‖ ciphertext ‖ tag), spec Appendix C. */
export function cdivSha256(aad: Buffer, metadata: Buffer, iv: Buffer, ciphertext: Buffer, tag: Buffer): Buffer {
  return createHash('sha256').update(aad).update(metadata).update(iv).update(ciphertext).update(tag).digest();
}
