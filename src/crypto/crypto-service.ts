import { createHash, timingSafeEqual } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { decryptionFailed, invalidCiphertext, KmsError, keyState, unsupported, validation } from '../errors.js';
import { isAsymmetric, KEY_TYPES, type KeyFamily } from '../keys/key-types.js';
import type { KeyRecord, KeyVersion } from '../keys/model.js';
import { enabledVersions, versionForExisting, versionForNew } from '../keys/version-policy.js';
import { CKM_EDDSA, HASH_MECH, HMAC_MECH, type HashName } from '../token/constants.js';
import type { RegionToken } from '../token/region-token.js';
import type { RegionRegistry } from '../token/regions.js';
import { publicKeyObject, spkiPem } from '../token/public-key.js';
import { derToRaw, rawToDer } from './ecdsa-signature.js';
import { formatVersioned, parseVersioned } from './versioned.js';
import { IvSource } from './iv-source.js';
import { TokenBurst } from '../token/token-burst.js';

export type SigningHash = Exclude<HashName, 'SHA1'>;
const HASH_ALIASES: Record<string, SigningHash> = {
  'sha2-256': 'SHA256',
  'sha2-384': 'SHA384',
  'sha2-512': 'SHA512',
  SHA256: 'SHA256',
  SHA384: 'SHA384',
  SHA512: 'SHA512',
};
const NODE_HASH: Record<SigningHash, string> = { SHA256: 'sha256', SHA384: 'sha384', SHA512: 'sha512' };
const EC_SIZE: Record<string, number> = { 'ecdsa-p256': 32, 'ecdsa-p384': 48, 'ecdsa-p521': 66 };
/** DER DigestInfo prefixes (RFC 8017 §9.2 note 1) for PKCS#1 v1.5 over a precomputed digest. */
const DIGEST_INFO: Record<SigningHash, Buffer> = {
  SHA256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  SHA384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  SHA512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
};


export function parseHash(name: string | undefined, field: string): SigningHash | undefined {
  if (name === undefined || name === '') return undefined;
  const h = HASH_ALIASES[name];
  if (!h) throw validation(`${field}: must be one of sha2-256, sha2-384, sha2-512 (or SHA256, SHA384, SHA512)`);
  return h;
}

export interface SignInput {
  input: Buffer;
  keyVersion?: number;
  hashAlgorithm?: string;
  prehashed?: boolean;
  signatureAlgorithm?: 'pss' | 'pkcs1v15';
  context?: string;
}

/** Batch items between two yields to the event loop (~20 µs each). */
const BATCH_CHUNK = 64;

export type CryptoErrorItem = { error: { code: string; message: string } };

/** Every cryptographic operation of the contract, each on the key version's token object. */
export class CryptoService {
  private readonly ivs = new IvSource();
  private readonly pemCache = new Map<string, string>();
  private readonly burst = new TokenBurst();

  constructor(private readonly regions: RegionRegistry) {}

  private usable(key: KeyRecord, families: KeyFamily[], op: string): RegionToken {
    const family = KEY_TYPES[key.keyType].family;
    if (!families.includes(family)) throw unsupported(`${op} is not available for keyType ${key.keyType}`);
    if (key.status !== 'active') throw keyState(`key is ${key.status}; ${op} needs an active key`);
    return this.regions.require(key.region);
  }

  // ---- AES-GCM -------------------------------------------------------------------------------

  encrypt(key: KeyRecord, plaintext: Buffer, aad: Buffer, keyVersion?: number) {
    return this.prepareEncrypt(this.usable(key, ['aes'], 'encrypt'), key, plaintext, aad, keyVersion)();
  }

  /**
   * The same as encrypt, with the token call run in this event-loop turn's burst (TokenBurst):
   * the HTTP API's single encrypt, where requests come many per turn. Key and version checks
   * happen now, so their errors are the same as encrypt's.
   */
  encryptInBurst(key: KeyRecord, plaintext: Buffer, aad: Buffer, keyVersion?: number) {
    return this.burst.run(this.prepareEncrypt(this.usable(key, ['aes'], 'encrypt'), key, plaintext, aad, keyVersion));
  }

  /**
   * One AES-GCM encryption: version and IV chosen now (their errors thrown now), the token call
   * returned to be run synchronously on the main thread (~20 µs: cheaper than a thread hop).
   */
  private prepareEncrypt(token: RegionToken, key: KeyRecord, plaintext: Buffer, aad: Buffer, keyVersion?: number) {
    const v = versionForNew(key, keyVersion);
    const iv = this.ivs.next();
    const id = this.objectId(v);
    return () => this.encrypted(v, iv, token.aesGcmEncrypt(id, iv, aad, plaintext));
  }

  private encrypted(v: KeyVersion, iv: Buffer, ct: Buffer) {
    return { ciphertext: formatVersioned(v.version, Buffer.concat([iv, ct])), keyVersion: String(v.version) };
  }

  decrypt(key: KeyRecord, ciphertext: string, aad: Buffer) {
    return this.prepareDecrypt(this.usable(key, ['aes'], 'decrypt'), key, ciphertext, aad)();
  }

  /** The same as decrypt, with the token call run in this turn's burst (see encryptInBurst). */
  decryptInBurst(key: KeyRecord, ciphertext: string, aad: Buffer) {
    return this.burst.run(this.prepareDecrypt(this.usable(key, ['aes'], 'decrypt'), key, ciphertext, aad));
  }

  /** One AES-GCM decryption: the ciphertext's form and version checked now, the token call returned. */
  private prepareDecrypt(token: RegionToken, key: KeyRecord, ciphertext: string, aad: Buffer) {
    const { v, data } = this.decryptable(key, ciphertext);
    const id = this.objectId(v);
    return () => this.decrypted(v, token.aesGcmDecrypt(id, data.subarray(0, 12), aad, data.subarray(12)));
  }

  private decryptable(key: KeyRecord, ciphertext: string) {
    const { version, data } = parseVersioned(ciphertext, 'ciphertext');
    const v = versionForExisting(key, version, 'ciphertext');
    if (data.length < 12 + 16) throw invalidCiphertext('ciphertext: shorter than IV and tag');
    return { v, data };
  }

  private decrypted(v: KeyVersion, pt: Buffer | undefined) {
    if (!pt) throw decryptionFailed();
    return { plaintext: pt, keyVersion: String(v.version) };
  }

  /** CKA_ID bytes of a version, made once (not a Buffer allocation per operation). */
  private objectId(v: KeyVersion): Buffer {
    let id = this.objectIds.get(v.ckaId);
    if (!id) this.objectIds.set(v.ckaId, (id = Buffer.from(v.ckaId)));
    return id;
  }
  private readonly objectIds = new Map<string, Buffer>();

  // ---- AES-GCM with the parts held by the caller (the XKS adapter) ----------------------------

  /**
   * Encrypts with the latest version and hands back IV, ciphertext and tag separately, plus
   * the version, for wire formats that carry them as separate fields (AWS XKS) instead of
   * the `kms:vN:` string. `aad` may be a function of the version, for formats whose AAD
   * binds the version that encrypts (XKS ciphertextMetadata).
   */
  encryptParts(key: KeyRecord, plaintext: Buffer, aad: Buffer | ((version: number) => Buffer)) {
    const token = this.usable(key, ['aes'], 'encrypt');
    const v = versionForNew(key, undefined);
    const iv = this.ivs.next();
    const out = token.aesGcmEncrypt(this.objectId(v), iv, typeof aad === 'function' ? aad(v.version) : aad, plaintext);
    return { version: v.version, iv, ciphertext: out.subarray(0, out.length - 16), tag: out.subarray(out.length - 16) };
  }

  /** Decrypts with an explicitly named version (same version rules as `decrypt`); a bad tag is DecryptionFailed. */
  decryptParts(key: KeyRecord, version: number, iv: Buffer, ciphertext: Buffer, tag: Buffer, aad: Buffer): Buffer {
    const token = this.usable(key, ['aes'], 'decrypt');
    const v = versionForExisting(key, version, 'ciphertextMetadata');
    if (iv.length !== 12 || tag.length !== 16) throw invalidCiphertext('IV must be 12 bytes and the tag 16 bytes');
    const pt = token.aesGcmDecrypt(this.objectId(v), iv, aad, Buffer.concat([ciphertext, tag]));
    if (!pt) throw decryptionFailed();
    return pt;
  }

  /**
   * Runs a batch synchronously on the main thread in chunks of BATCH_CHUNK, yielding to the event
   * loop between chunks (a 1,000-item batch never holds it for more than ~1.5 ms at a time) and
   * checking the key is still usable after each yield. Not through the thread pool: SoftHSM2
   * serialises a process's calls on its own locks, so a second thread adds the hop without adding
   * throughput (measured: one thread 46k AES-GCM/s, two threads 37k/s together). A batch uses the
   * other core in the other kmsd worker process (`workers`).
   */
  private async inChunks<I, O>(key: KeyRecord, op: 'encrypt' | 'decrypt', token: RegionToken, items: I[], run: (token: RegionToken, chunk: I[]) => O[]): Promise<O[]> {
    const out: O[] = [];
    for (let i = 0; i < items.length; i += BATCH_CHUNK) {
      if (i > 0) {
        await new Promise((r) => setImmediate(r));
        token = this.usable(key, ['aes'], op);
      }
      out.push(...run(token, items.slice(i, i + BATCH_CHUNK)));
    }
    return out;
  }

  /**
   * Every item under the version that is latest when the batch starts. Items that are already
   * errors (rejected by the adapter's validation) keep their slot and are passed through.
   */
  encryptBatch(key: KeyRecord, items: ({ plaintext: Buffer; aad: Buffer } | CryptoErrorItem)[]) {
    const token = this.usable(key, ['aes'], 'encrypt');
    const v = versionForNew(key, undefined);
    const id = this.objectId(v);
    return this.inChunks(key, 'encrypt', token, items, (t, chunk) => {
      const out: ({ ciphertext: string; keyVersion: string } | CryptoErrorItem)[] = new Array(chunk.length);
      const inputs: { iv: Buffer; aad: Buffer; plaintext: Buffer }[] = [];
      const slots: number[] = [];
      chunk.forEach((it, j) => {
        if ('error' in it) out[j] = it;
        else {
          inputs.push({ iv: this.ivs.next(), aad: it.aad, plaintext: it.plaintext });
          slots.push(j);
        }
      });
      const cts = inputs.length ? t.aesGcmEncryptMany(id, inputs) : [];
      slots.forEach((j, n) => (out[j] = this.encrypted(v, inputs[n]!.iv, cts[n]!)));
      return out;
    });
  }

  /** A bad item gets an error in its slot and the others go on (items that are already errors pass through). */
  decryptBatch(key: KeyRecord, items: ({ ciphertext: string; aad: Buffer } | CryptoErrorItem)[]) {
    const token = this.usable(key, ['aes'], 'decrypt');
    return this.inChunks(key, 'decrypt', token, items, (t, chunk) =>
      chunk.map((i): { plaintext: string; keyVersion: string } | CryptoErrorItem => {
        if ('error' in i) return i;
        try {
          const r = this.prepareDecrypt(t, key, i.ciphertext, i.aad)();
          return { plaintext: r.plaintext.toString('base64'), keyVersion: r.keyVersion };
        } catch (e) {
          if (!(e instanceof KmsError)) throw e;
          return { error: { code: e.code, message: e.message } };
        }
      }),
    );
  }

  reEncrypt(source: KeyRecord, ciphertext: string, aad: Buffer, destination: KeyRecord) {
    const dec = this.decrypt(source, ciphertext, aad);
    const enc = this.encrypt(destination, dec.plaintext, aad);
    dec.plaintext.fill(0);
    return { ciphertext: enc.ciphertext, sourceKeyVersion: dec.keyVersion, keyVersion: enc.keyVersion };
  }

  /** Data key from the token's RNG, returned wrapped under the key (and in plaintext if asked). */
  generateDataKey(key: KeyRecord, bytes: 16 | 32, includePlaintext: boolean, aad: Buffer) {
    const token = this.usable(key, ['aes'], 'generate-data-key');
    const dataKey = token.random(bytes);
    const enc = this.prepareEncrypt(token, key, dataKey, aad)();
    const out: { ciphertext: string; plaintext?: string; keyVersion: string } = { ciphertext: enc.ciphertext, keyVersion: enc.keyVersion };
    if (includePlaintext) out.plaintext = dataKey.toString('base64');
    dataKey.fill(0);
    return out;
  }

  // ---- signatures ----------------------------------------------------------------------------

  /** Mechanism and the bytes it signs for this key type and request. */
  private signingPlan(key: KeyRecord, req: Omit<SignInput, 'keyVersion'>): { mech: pkcs11js.Mechanism; data: Buffer } {
    if (req.context) throw unsupported('context: signing contexts are not supported');
    const info = KEY_TYPES[key.keyType];
    if (info.family === 'ed25519') {
      if (req.prehashed) throw validation('prehashed: Ed25519 signs the message itself, not a digest');
      if (req.hashAlgorithm) throw validation('hashAlgorithm: Ed25519 takes no hash algorithm');
      if (req.signatureAlgorithm) throw validation('signatureAlgorithm: only for RSA keys');
      return { mech: { mechanism: CKM_EDDSA }, data: req.input };
    }
    const hash = parseHash(req.hashAlgorithm, 'hashAlgorithm') ?? (info.hash as SigningHash);
    let digest = req.input;
    if (req.prehashed) {
      if (req.input.length !== HASH_MECH[hash].bytes)
        throw validation(`input: a ${hash} digest is ${HASH_MECH[hash].bytes} bytes, got ${req.input.length}`);
    } else digest = createHash(NODE_HASH[hash]).update(req.input).digest();
    if (info.family === 'ecdsa') {
      if (req.signatureAlgorithm) throw validation('signatureAlgorithm: only for RSA keys');
      return { mech: { mechanism: pkcs11js.CKM_ECDSA }, data: digest };
    }
    if ((req.signatureAlgorithm ?? 'pss') === 'pss') {
      const h = HASH_MECH[hash];
      return {
        mech: {
          mechanism: pkcs11js.CKM_RSA_PKCS_PSS,
          parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: h.hashAlg, mgf: h.mgf, saltLen: h.bytes } as pkcs11js.RsaPSS,
        },
        data: digest,
      };
    }
    return { mech: { mechanism: pkcs11js.CKM_RSA_PKCS }, data: Buffer.concat([DIGEST_INFO[hash], digest]) };
  }

  async sign(key: KeyRecord, req: SignInput) {
    const token = this.usable(key, ['ed25519', 'ecdsa', 'rsa'], 'sign');
    const v = versionForNew(key, req.keyVersion);
    const plan = this.signingPlan(key, req);
    let sig = await token.sign(this.objectId(v), plan.mech, plan.data);
    if (KEY_TYPES[key.keyType].family === 'ecdsa') sig = rawToDer(sig);
    return { signature: formatVersioned(v.version, sig), keyVersion: String(v.version) };
  }

  async verify(key: KeyRecord, req: Omit<SignInput, 'keyVersion'> & { signature: string }) {
    const token = this.usable(key, ['ed25519', 'ecdsa', 'rsa'], 'verify');
    const { version, data } = parseVersioned(req.signature, 'signature');
    const v = versionForExisting(key, version, 'signature');
    const plan = this.signingPlan(key, req);
    let sig: Buffer | undefined = data;
    if (KEY_TYPES[key.keyType].family === 'ecdsa') sig = derToRaw(data, EC_SIZE[key.keyType]!);
    if (!sig || !sig.length) return { valid: false };
    return { valid: await token.verify(this.objectId(v), plan.mech, plan.data, sig) };
  }

  // ---- HMAC ----------------------------------------------------------------------------------

  private hmacMechanism(key: KeyRecord, algorithm: string | undefined, field: string): number {
    const own = KEY_TYPES[key.keyType].hash as SigningHash;
    const asked = parseHash(algorithm, field);
    if (asked && asked !== own) throw validation(`${field}: key ${key.keyType} computes ${own} only`);
    return HMAC_MECH[own];
  }

  hmac(key: KeyRecord, input: Buffer, keyVersion?: number, algorithm?: string) {
    const token = this.usable(key, ['hmac'], 'hmac');
    const mech = this.hmacMechanism(key, algorithm, 'algorithm');
    const v = versionForNew(key, keyVersion);
    return { hmac: formatVersioned(v.version, token.hmac(this.objectId(v), mech, input)), keyVersion: String(v.version) };
  }

  verifyHmac(key: KeyRecord, input: Buffer, mac: string, hashAlgorithm?: string) {
    const token = this.usable(key, ['hmac'], 'verify-hmac');
    const mech = this.hmacMechanism(key, hashAlgorithm, 'hashAlgorithm');
    const { version, data } = parseVersioned(mac, 'hmac');
    const v = versionForExisting(key, version, 'hmac');
    const expected = token.hmac(this.objectId(v), mech, input);
    const valid = expected.length === data.length && timingSafeEqual(expected, data);
    return { valid, keyVersion: String(version) };
  }

  // ---- public keys and RSA decryption ----------------------------------------------------------

  publicKey(key: KeyRecord, version?: number) {
    if (!isAsymmetric(key.keyType)) throw unsupported(`public-key is not available for keyType ${key.keyType}`);
    if (key.status !== 'active') throw keyState(`key is ${key.status}`);
    const token = this.regions.require(key.region);
    const versions = version === undefined ? enabledVersions(key) : [versionForNew(key, version, 'version')];
    const keys: Record<string, string> = {};
    for (const v of versions) keys[String(v.version)] = this.pem(token, v.ckaId);
    return { keys, keyType: key.keyType };
  }

  pem(token: RegionToken, ckaId: string): string {
    let pem = this.pemCache.get(ckaId);
    if (!pem) {
      pem = spkiPem(publicKeyObject(token.readPublicKey(Buffer.from(ckaId))));
      this.pemCache.set(ckaId, pem);
    }
    return pem;
  }

  /** Raw RSA-OAEP names no version, so the caller must (`keyVersion`, required). */
  async decryptAsymmetric(key: KeyRecord, ciphertext: Buffer, keyVersion: number, hashFunction: string | undefined) {
    const token = this.usable(key, ['rsa'], 'decrypt-asymmetric');
    const supported = await this.regions.oaepHashes(key.region);
    const hash = (hashFunction ?? supported[0]) as HashName | undefined;
    if (!hash || !supported.includes(hash))
      throw unsupported(`hashFunction: this region's token does RSA-OAEP with ${supported.join(', ') || 'no hash'} only`);
    const v = versionForExisting(key, keyVersion, 'keyVersion');
    const pt = await token.rsaOaepDecrypt(this.objectId(v), hash, ciphertext);
    if (!pt) throw decryptionFailed('decryption failed: wrong key, wrong hash or corrupted ciphertext');
    return { plaintext: pt.toString('base64'), keyVersion: String(v.version) };
  }
}
