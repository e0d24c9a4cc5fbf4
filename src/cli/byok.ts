import { createPublicKey } from 'node:crypto';
import type { Command } from 'commander';
import pkcs11js from 'pkcs11js';
import { readSecret } from '../config/load.js';
import { CURVE_OIDS, type HashName } from '../token/constants.js';
import { oaep } from '../token/region-token.js';
import { ephemeralWrapKeyTemplate } from '../token/templates.js';

const P = pkcs11js;

interface ByokOptions {
  url: string;
  region: string;
  org: string;
  project?: string;
  apiTokenEnv: string;
  module: string;
  tokenLabel: string;
  pinEnv: string;
  keyLabel?: string;
  keyId?: string;
  name: string;
  keyType?: string;
  description?: string;
  allowRotation?: boolean;
  exportAllowed?: boolean;
}

/** `kmsctl byok` (issue 9): import a key from another PKCS#11 token through kmsd. */
export function registerByokCommand(program: Command): void {
  program
    .command('byok')
    .description(
      'import a key from another PKCS#11 token (an existing HSM) into kmsd: the key is wrapped inside the source token with C_WrapKey ' +
        "under the region's wrapping key, so its material never exists in plaintext outside an HSM",
    )
    .requiredOption('--url <url>', 'kmsd base URL, e.g. https://kms.example.com:8200')
    .requiredOption('--region <region>', 'kmsd region to import into')
    .requiredOption('--org <organisation>', 'organisation identity (X-Organisation-Identity)')
    .option('--project <project>', 'project identity (X-Project-Identity) for a project-scoped key')
    .option('--api-token-env <name>', 'env var holding the kmsd bearer token', 'KMSD_TOKEN')
    .requiredOption('--module <path>', 'PKCS#11 library of the source token')
    .requiredOption('--token-label <label>', 'label of the source token')
    .option('--pin-env <name>', 'env var holding the source token user PIN', 'KMSD_SOURCE_PIN')
    .option('--key-label <label>', 'CKA_LABEL of the source key')
    .option('--key-id <hex>', 'CKA_ID of the source key, in hex')
    .requiredOption('--name <name>', 'name of the key in kmsd')
    .option('--key-type <type>', 'kmsd keyType (default: inferred from the source key)')
    .option('--description <text>', 'key description')
    .option('--allow-rotation', 'let kmsd rotate the imported key and accept import-version')
    .option('--export-allowed', 'allow break-glass export of the imported key')
    .action(async (o: ByokOptions) => {
      try {
        const key = await byok(o);
        process.stdout.write(`${JSON.stringify(key, null, 2)}\n`);
        process.stderr.write(`imported ${o.name} as ${key.identity} (${key.keyType}) into region ${o.region}\n`);
      } catch (e) {
        process.stderr.write(`kmsctl byok: ${(e as Error).message}\n`);
        process.exit(1);
      }
    });
}

async function byok(o: ByokOptions): Promise<{ identity: string; keyType: string }> {
  if (Boolean(o.keyLabel) === Boolean(o.keyId)) throw new Error('name the source key with exactly one of --key-label or --key-id');
  if (o.keyId && !/^([0-9a-fA-F]{2})+$/.test(o.keyId)) throw new Error('--key-id: hex digits, an even number of them');
  const api = new KmsdClient(o.url, readSecret(o.apiTokenEnv, undefined, 'kmsd API token'), o.org, o.project);
  const wrapping = await api.call<{ publicKey: string; algorithm: string; hashFunctions?: HashName[] }>('GET', `/v1/kms/${o.region}/wrapping-key`);
  if (wrapping.algorithm !== 'RSA_AES_KEY_WRAP') throw new Error(`kmsd offers wrapping algorithm ${wrapping.algorithm}, expected RSA_AES_KEY_WRAP`);

  const source = SourceToken.open(o.module, o.tokenLabel, readSecret(o.pinEnv, undefined, 'source token PIN'));
  let material: { blob: Buffer; hash: HashName };
  let keyType: string;
  try {
    const key = source.findKey(o.keyLabel ? { label: o.keyLabel } : { id: Buffer.from(o.keyId!, 'hex') });
    keyType = o.keyType ?? source.inferKeyType(key);
    material = source.wrapForKmsd(key, wrapping.publicKey, wrapping.hashFunctions ?? ['SHA1']);
  } finally {
    source.close();
  }
  return api.call('POST', `/v1/kms/${o.region}/keys`, {
    name: o.name,
    keyType,
    importKeyMaterial: material.blob.toString('base64'),
    hashFunction: material.hash,
    ...(o.description !== undefined ? { description: o.description } : {}),
    ...(o.allowRotation ? { allowRotation: true } : {}),
    ...(o.exportAllowed ? { exportAllowed: true } : {}),
  });
}

class KmsdClient {
  constructor(
    private readonly base: string,
    private readonly token: string,
    private readonly org: string,
    private readonly project?: string,
  ) {}

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.token}`,
      'x-organisation-identity': this.org,
      accept: 'application/json',
    };
    if (this.project) headers['x-project-identity'] = this.project;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(new URL(path, this.base), { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    let parsed: { code?: string; message?: string } | undefined;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    if (!res.ok) throw new Error(`kmsd ${method} ${path}: ${res.status} ${parsed?.code ?? ''} ${parsed?.message ?? text}`.trim());
    return parsed as T;
  }
}

const CURVE_KEY_TYPE: Record<string, string> = {
  [CURVE_OIDS['P-256'].toString('hex')]: 'ecdsa-p256',
  [CURVE_OIDS['P-384'].toString('hex')]: 'ecdsa-p384',
  [CURVE_OIDS['P-521'].toString('hex')]: 'ecdsa-p521',
};

/** The source HSM: only C_WrapKey ever takes the key out of it, wrapped. */
class SourceToken {
  private constructor(
    private readonly p11: pkcs11js.PKCS11,
    private readonly session: pkcs11js.Handle,
  ) {}

  static open(module: string, label: string, pin: string): SourceToken {
    const p11 = new pkcs11js.PKCS11();
    p11.load(module);
    p11.C_Initialize({ flags: P.CKF_OS_LOCKING_OK });
    try {
      const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === label);
      if (!slot) throw new Error(`no token labelled ${label} in ${module}`);
      const session = p11.C_OpenSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION);
      p11.C_Login(session, P.CKU_USER, pin);
      return new SourceToken(p11, session);
    } catch (e) {
      p11.C_Finalize();
      throw e;
    }
  }

  close(): void {
    try {
      this.p11.C_Logout(this.session);
    } catch {
      /* session already gone */
    }
    this.p11.C_Finalize();
  }

  private attr(h: pkcs11js.Handle, type: number): Buffer {
    return this.p11.C_GetAttributeValue(this.session, h, [{ type }])[0]!.value as Buffer;
  }

  private ulong(h: pkcs11js.Handle, type: number): number {
    return this.attr(h, type).readUInt32LE(0); // CK_ULONG, little-endian; kmsd values fit 32 bits
  }

  findKey(by: { label: string } | { id: Buffer }): pkcs11js.Handle {
    const found: pkcs11js.Handle[] = [];
    for (const cls of [P.CKO_SECRET_KEY, P.CKO_PRIVATE_KEY]) {
      this.p11.C_FindObjectsInit(this.session, [
        { type: P.CKA_CLASS, value: cls },
        'label' in by ? { type: P.CKA_LABEL, value: by.label } : { type: P.CKA_ID, value: by.id },
      ]);
      found.push(...this.p11.C_FindObjects(this.session, 10));
      this.p11.C_FindObjectsFinal(this.session);
    }
    const what = 'label' in by ? `label ${by.label}` : `CKA_ID ${by.id.toString('hex')}`;
    if (!found.length) throw new Error(`no secret or private key with ${what} on the source token`);
    if (found.length > 1) throw new Error(`${found.length} keys have ${what} on the source token; name one by --key-id`);
    const key = found[0]!;
    if (this.attr(key, P.CKA_EXTRACTABLE)[0] !== 1)
      throw new Error(`the source key (${what}) is not extractable (CKA_EXTRACTABLE=false): the source token will not wrap it`);
    return key;
  }

  inferKeyType(key: pkcs11js.Handle): string {
    const kt = this.ulong(key, P.CKA_KEY_TYPE);
    if (kt === P.CKK_AES) {
      const len = this.ulong(key, P.CKA_VALUE_LEN);
      if (len === 32) return 'aes256-gcm96';
      if (len === 16) return 'aes128-gcm96';
      throw new Error(`source AES key of ${len} bytes: pass --key-type`);
    }
    if (kt === P.CKK_GENERIC_SECRET) return 'hmac-sha256';
    if (kt === P.CKK_EC) {
      const t = CURVE_KEY_TYPE[this.attr(key, P.CKA_EC_PARAMS).toString('hex')];
      if (!t) throw new Error('source EC key on a curve kmsd does not serve');
      return t;
    }
    if (kt === P.CKK_RSA) return `rsa-${this.attr(key, P.CKA_MODULUS).length * 8}`;
    throw new Error(`cannot infer the kmsd keyType of source key type 0x${kt.toString(16)}: pass --key-type`);
  }

  /**
   * The two-part format, made inside the source token: kmsd's wrapping public key becomes a
   * session object, an ephemeral AES-256 key is generated there, C_WrapKey wraps it with
   * RSA-OAEP (the first hash both tokens can do) and wraps the source key with AES-KWP.
   */
  wrapForKmsd(key: pkcs11js.Handle, publicKeyPem: string, hashes: HashName[]): { blob: Buffer; hash: HashName } {
    const jwk = createPublicKey(publicKeyPem).export({ format: 'jwk' });
    const p11 = this.p11;
    const s = this.session;
    const wrappingKey = p11.C_CreateObject(s, [
      { type: P.CKA_CLASS, value: P.CKO_PUBLIC_KEY },
      { type: P.CKA_KEY_TYPE, value: P.CKK_RSA },
      { type: P.CKA_TOKEN, value: false },
      { type: P.CKA_MODULUS, value: Buffer.from(jwk.n!, 'base64url') },
      { type: P.CKA_PUBLIC_EXPONENT, value: Buffer.from(jwk.e!, 'base64url') },
      { type: P.CKA_WRAP, value: true },
    ]);
    try {
      const ephemeral = p11.C_GenerateKey(s, { mechanism: P.CKM_AES_KEY_GEN }, ephemeralWrapKeyTemplate({ extractable: true }));
      try {
        for (const hash of hashes) {
          let rsaPart: Buffer;
          try {
            rsaPart = p11.C_WrapKey(s, oaep(hash), wrappingKey, ephemeral, Buffer.alloc(4096));
          } catch (e) {
            // CKR_ARGUMENTS_BAD / CKR_MECHANISM_(PARAM_)INVALID: the source token lacks this hash; try the next one kmsd offers.
            if (e instanceof P.Pkcs11Error && [0x7, 0x70, 0x71].includes(e.code)) continue;
            throw e;
          }
          const kwpPart = p11.C_WrapKey(s, { mechanism: P.CKM_AES_KEY_WRAP_PAD }, ephemeral, key, Buffer.alloc(16384));
          return { blob: Buffer.concat([rsaPart, kwpPart]), hash };
        }
        throw new Error(`the source token cannot RSA-OAEP wrap with any hash kmsd offers (${hashes.join(', ')})`);
      } finally {
        p11.C_DestroyObject(s, ephemeral);
      }
    } finally {
      p11.C_DestroyObject(s, wrappingKey);
    }
  }
}
