import type { Services } from '../api/services.js';
import { isBase64 } from '../crypto/versioned.js';
import { VERSION } from '../daemon.js';
import type { KeyRecord } from '../keys/model.js';
import type { KeyType } from '../keys/key-types.js';
import { XksError, xksInvalidCiphertext, xksValidation } from './errors.js';
import type { Keystore } from './keystores.js';
import { EXTERNAL_KEY_ID } from './routes.js';
import type { xksSchemas } from './schemas.js';
import { cdivSha256, decodeCiphertextMetadata, encodeCiphertextMetadata, gcmAad, MAX_AAD_BYTES } from './wire.js';
import type { z } from 'zod';

/** What an operation learnt that its audit record should carry. */
export interface AuditNote {
  keyIdentity?: string;
  keyVersion?: string;
}

const XKS_KEY_TYPE: KeyType = 'aes256-gcm96';
const EMPTY: Buffer = Buffer.alloc(0);

/** Key spec and usages GetKeyMetadata reports for each kmsd key type; only AES-256 serves XKS. */
const METADATA_OF: Record<KeyType, { keySpec: string; keyUsage: string[] }> = {
  'aes256-gcm96': { keySpec: 'AES_256', keyUsage: ['ENCRYPT', 'DECRYPT'] },
  'aes128-gcm96': { keySpec: 'AES_128', keyUsage: [] },
  'chacha20-poly1305': { keySpec: 'CHACHA20_POLY1305', keyUsage: [] },
  hmac: { keySpec: 'HMAC_256', keyUsage: ['SIGN', 'VERIFY'] },
  'hmac-sha256': { keySpec: 'HMAC_256', keyUsage: ['SIGN', 'VERIFY'] },
  'hmac-sha384': { keySpec: 'HMAC_384', keyUsage: ['SIGN', 'VERIFY'] },
  'hmac-sha512': { keySpec: 'HMAC_512', keyUsage: ['SIGN', 'VERIFY'] },
  ed25519: { keySpec: 'ECC_NIST_EDWARDS25519', keyUsage: ['SIGN', 'VERIFY'] },
  'ecdsa-p256': { keySpec: 'ECC_NIST_P256', keyUsage: ['SIGN', 'VERIFY'] },
  'ecdsa-p384': { keySpec: 'ECC_NIST_P384', keyUsage: ['SIGN', 'VERIFY'] },
  'ecdsa-p521': { keySpec: 'ECC_NIST_P521', keyUsage: ['SIGN', 'VERIFY'] },
  'rsa-2048': { keySpec: 'RSA_2048', keyUsage: ['SIGN', 'VERIFY'] },
  'rsa-3072': { keySpec: 'RSA_3072', keyUsage: ['SIGN', 'VERIFY'] },
  'rsa-4096': { keySpec: 'RSA_4096', keyUsage: ['SIGN', 'VERIFY'] },
};

type Body<K extends keyof typeof xksSchemas> = z.output<(typeof xksSchemas)[K]>;

/** Decodes a base64 field; a bad value is `fail(message)`. */
function b64(value: unknown, field: string, fail: (m: string) => XksError): Buffer {
  if (typeof value !== 'string') throw fail(`${field}: must be a base64 string`);
  if (!isBase64(value)) throw fail(`${field}: is not valid standard base64`);
  return Buffer.from(value, 'base64');
}

/**
 * The four XKS operations over kmsd's key and crypto services: keys are looked up by
 * KeyService in the keystore's scope, AES-GCM runs in the token through CryptoService.
 */
export class XksOperations {
  constructor(private readonly s: Services) {}

  /** The keystore must belong to an organisation with KMS enabled (else the key store is "disabled"). */
  private checkKeystore(ks: Keystore): void {
    const org = this.s.config.organisations.find((o) => o.identity === ks.organisation);
    if (!org?.kmsEnabled) throw new XksError('InvalidStateException', `KMS is not enabled for organisation ${ks.organisation}`);
  }

  private key(ks: Keystore, keyId: string, note: AuditNote): KeyRecord {
    this.checkKeystore(ks);
    // The HSM first: with it down nothing can be promised about any key (503, not 404).
    this.s.regions.require(ks.region);
    // Any id the spec allows that names no key is KeyNotFound, never a validation error.
    if (!EXTERNAL_KEY_ID.test(keyId)) throw new XksError('KeyNotFoundException', 'no such external key');
    const key = this.s.keys.resolve(ks.scope, keyId);
    note.keyIdentity = key.identity;
    return key;
  }

  /** Encrypt/decrypt need an active AES-256 key. */
  private cryptoKey(ks: Keystore, keyId: string, note: AuditNote): KeyRecord {
    const key = this.key(ks, keyId, note);
    if (key.keyType !== XKS_KEY_TYPE)
      throw new XksError('InvalidKeyUsageException', `key ${keyId} is ${key.keyType}; XKS encrypts and decrypts with AES-256 keys only`);
    if (key.status !== 'active') throw new XksError('InvalidStateException', `key ${keyId} is ${key.status}`);
    return key;
  }

  health(ks: Keystore) {
    this.checkKeystore(ks);
    const token = this.s.regions.tokens.get(ks.region)!;
    let healthStatus: 'ACTIVE' | 'UNAVAILABLE' = 'UNAVAILABLE';
    if (token.available) {
      // Deep check (spec: SHOULD prove the HSM can work, not just that it is reachable): a
      // C_GenerateRandom on the logged-in session, which touches no customer key.
      try {
        token.random(16);
        healthStatus = 'ACTIVE';
      } catch {
        healthStatus = 'UNAVAILABLE';
      }
    }
    return {
      xksProxyFleetSize: 1,
      xksProxyVendor: 'kmsd',
      xksProxyModel: `kmsd ${VERSION}`,
      ekmVendor: token.manufacturer || 'unknown',
      ekmFleetDetails: [
        {
          id: `${ks.region}/${token.settings.label}${token.serial ? `/${token.serial}` : ''}`,
          model: [token.manufacturer, token.model].filter(Boolean).join(' ') || 'PKCS#11 token',
          healthStatus,
        },
      ],
    };
  }

  metadata(ks: Keystore, keyId: string, note: AuditNote) {
    const key = this.key(ks, keyId, note);
    const m = METADATA_OF[key.keyType];
    return { keySpec: m.keySpec, keyUsage: [...m.keyUsage], keyStatus: key.status === 'active' ? 'ENABLED' : 'DISABLED' };
  }

  encrypt(ks: Keystore, keyId: string, body: Body<'encrypt'>, note: AuditNote) {
    const key = this.cryptoKey(ks, keyId, note);
    const plaintext = b64(body.plaintext, 'plaintext', xksValidation);
    if (!plaintext.length) throw xksValidation('plaintext: must not be empty');
    const aad = body.additionalAuthenticatedData === undefined ? EMPTY : b64(body.additionalAuthenticatedData, 'additionalAuthenticatedData', xksValidation);
    if (aad.length > MAX_AAD_BYTES)
      throw new XksError('UnsupportedOperationException', `additionalAuthenticatedData: at most ${MAX_AAD_BYTES} bytes are supported`);

    let metadata: Buffer = EMPTY;
    const out = this.s.crypto.encryptParts(key, plaintext, (version) => gcmAad(aad, (metadata = encodeCiphertextMetadata(version))));
    note.keyVersion = String(out.version);
    const reply: Record<string, string> = {
      ciphertext: out.ciphertext.toString('base64'),
      ciphertextMetadata: metadata.toString('base64'),
      initializationVector: out.iv.toString('base64'),
      authenticationTag: out.tag.toString('base64'),
    };
    if (body.ciphertextDataIntegrityValueAlgorithm) {
      // Appendix C: hash first, then prove the output decrypts; the other order would let a
      // bit flip between the two go unnoticed.
      reply.ciphertextDataIntegrityValue = cdivSha256(aad, metadata, out.iv, out.ciphertext, out.tag).toString('base64');
      let check: Buffer;
      try {
        check = this.s.crypto.decryptParts(key, out.version, out.iv, out.ciphertext, out.tag, gcmAad(aad, metadata));
      } catch {
        throw new XksError('InternalException', 'the ciphertext failed its decrypt check; nothing was returned');
      }
      const same = check.equals(plaintext);
      check.fill(0);
      if (!same) throw new XksError('InternalException', 'the ciphertext failed its decrypt check; nothing was returned');
    }
    plaintext.fill(0);
    return reply;
  }

  decrypt(ks: Keystore, keyId: string, body: Body<'decrypt'>, note: AuditNote) {
    const key = this.cryptoKey(ks, keyId, note);
    const ciphertext = b64(body.ciphertext, 'ciphertext', xksInvalidCiphertext);
    const iv = b64(body.initializationVector, 'initializationVector', xksInvalidCiphertext);
    const tag = b64(body.authenticationTag, 'authenticationTag', xksInvalidCiphertext);
    if (body.ciphertextMetadata === undefined) throw xksInvalidCiphertext('ciphertextMetadata: is required for ciphertexts made by this proxy');
    const metadata = b64(body.ciphertextMetadata, 'ciphertextMetadata', xksInvalidCiphertext);
    const aad =
      body.additionalAuthenticatedData === undefined ? EMPTY : b64(body.additionalAuthenticatedData, 'additionalAuthenticatedData', xksInvalidCiphertext);
    if (iv.length !== 12) throw xksInvalidCiphertext('initializationVector: this proxy makes 12-byte IVs');
    if (tag.length !== 16) throw xksInvalidCiphertext('authenticationTag: must be 16 bytes');
    if (aad.length > MAX_AAD_BYTES) throw xksInvalidCiphertext(`additionalAuthenticatedData: longer than ${MAX_AAD_BYTES} bytes`);
    const version = decodeCiphertextMetadata(metadata);
    note.keyVersion = String(version);
    const plaintext = this.s.crypto.decryptParts(key, version, iv, ciphertext, tag, gcmAad(aad, metadata));
    const reply = { plaintext: plaintext.toString('base64') };
    plaintext.fill(0);
    return reply;
  }
}
