import { AwsError } from './errors.js';

/**
 * kmsd's CiphertextBlob for symmetric keys (README "AWS KMS API", "Ciphertext blob"):
 *
 *   "KMSD" (4 bytes) ‖ format 0x01 ‖ identity length L (1 byte) ‖ key identity (L bytes, ASCII)
 *   ‖ key version (uint32 big-endian) ‖ IV (12) ‖ AES-256-GCM ciphertext ‖ tag (16)
 *
 * IV ‖ ciphertext ‖ tag is exactly the base64 part of the native `kms:v<N>:` ciphertext, made by
 * the same CryptoService call with the canonical encryption context as the GCM additional data.
 * So Decrypt needs no KeyId (the blob names the key), survives rotation (it names the version),
 * and a changed identity or version makes the tag check fail under the key it then names.
 */
const MAGIC = Buffer.from('KMSD', 'ascii');
const FORMAT_V1 = 1;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const IDENTITY = /^[A-Za-z0-9-]{1,64}$/;

export interface ParsedBlob {
  identity: string;
  version: number;
  /** IV ‖ ciphertext ‖ tag. */
  sealed: Buffer;
}

export function encodeBlob(identity: string, version: number, sealed: Buffer): Buffer {
  const id = Buffer.from(identity, 'ascii');
  const head = Buffer.alloc(MAGIC.length + 2 + id.length + 4);
  MAGIC.copy(head, 0);
  head[4] = FORMAT_V1;
  head[5] = id.length;
  id.copy(head, 6);
  head.writeUInt32BE(version, 6 + id.length);
  return Buffer.concat([head, sealed]);
}

/** A blob kmsd made, taken apart; anything else is InvalidCiphertextException. */
export function decodeBlob(blob: Buffer): ParsedBlob {
  const bad = () => new AwsError('InvalidCiphertextException', 'the ciphertext was not made by this KMS or was modified');
  if (blob.length < 6 || !blob.subarray(0, 4).equals(MAGIC) || blob[4] !== FORMAT_V1) throw bad();
  const idLength = blob[5]!;
  const idEnd = 6 + idLength;
  if (blob.length < idEnd + 4 + IV_BYTES + TAG_BYTES) throw bad();
  const identity = blob.subarray(6, idEnd).toString('ascii');
  if (!IDENTITY.test(identity)) throw bad();
  const version = blob.readUInt32BE(idEnd);
  if (version < 1) throw bad();
  return { identity, version, sealed: blob.subarray(idEnd + 4) };
}

/**
 * The canonical bytes of an EncryptionContext, bound as AES-GCM additional data: pairs sorted
 * by key (UTF-8 byte order), each as len16(key) ‖ key ‖ len16(value) ‖ value, after a uint16
 * count — the AWS Encryption SDK's serialisation. Member order in the request does not matter;
 * an absent and an empty context are the same (empty bytes), as in AWS.
 */
export function canonicalContext(context: Record<string, string> | undefined): Buffer {
  if (!context) return EMPTY;
  const keys = Object.keys(context);
  if (!keys.length) return EMPTY;
  // One buffer, written in place: this runs on every Encrypt, Decrypt and GenerateDataKey.
  const pairs = keys.map((k) => [Buffer.from(k, 'utf8'), Buffer.from(context[k]!, 'utf8')] as const);
  if (pairs.length > 1) pairs.sort((a, b) => Buffer.compare(a[0], b[0]));
  let size = 2;
  for (const [k, v] of pairs) size += 4 + k.length + v.length;
  const out = Buffer.allocUnsafe(size);
  let at = out.writeUInt16BE(pairs.length, 0);
  for (const [k, v] of pairs) {
    at = out.writeUInt16BE(k.length, at);
    at += k.copy(out, at);
    at = out.writeUInt16BE(v.length, at);
    at += v.copy(out, at);
  }
  return out;
}

const EMPTY = Buffer.alloc(0);
