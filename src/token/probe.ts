import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import type { HashName } from './constants.js';
import { oaep, type RegionToken } from './region-token.js';
import { unwrapKeyPairTemplate } from './templates.js';
import { rsaPublicKeyObject } from './public-key.js';

const NODE_HASH: Record<HashName, string> = { SHA1: 'sha1', SHA256: 'sha256', SHA384: 'sha384', SHA512: 'sha512' };

/**
 * Which RSA-OAEP hashes the token can unwrap with, strongest first: a throwaway session key
 * pair and one trial unwrap per hash (SoftHSM2 2.6.1 answers SHA-1 only, measured).
 */
export async function probeOaepHashes(token: RegionToken): Promise<HashName[]> {
  const t = unwrapKeyPairTemplate(2048, { ckaId: Buffer.alloc(0), label: 'kmsd-probe', extractable: false, token: false });
  const pair = await token.generateKeyPairRaw(t.mechanism, stripId(t.publicTemplate), stripId(t.privateTemplate));
  try {
    const pub = rsaPublicKeyObject(token.readPublicKeyByHandle(pair.publicKey));
    const works: HashName[] = [];
    for (const hash of ['SHA512', 'SHA384', 'SHA256', 'SHA1'] as HashName[]) {
      const wrapped = publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: NODE_HASH[hash] }, randomBytes(32));
      try {
        const h = await token.unwrap({ handle: pair.privateKey }, oaep(hash), wrapped, [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
          { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
          { type: pkcs11js.CKA_TOKEN, value: false },
          { type: pkcs11js.CKA_SENSITIVE, value: true },
          { type: pkcs11js.CKA_EXTRACTABLE, value: false },
          { type: pkcs11js.CKA_ENCRYPT, value: true },
        ]);
        token.destroyHandle(h);
        works.push(hash);
      } catch {
        /* not supported by this token */
      }
    }
    return works;
  } finally {
    token.destroyHandle(pair.privateKey);
    token.destroyHandle(pair.publicKey);
  }
}

function stripId(t: pkcs11js.Template): pkcs11js.Template {
  return t.filter((a) => a.type !== pkcs11js.CKA_ID);
}

