/**
 * Plays the customer's existing HSM for the `kmsctl byok` tests: makes keys in a second
 * SoftHSM2 token and uses them there (AES-GCM encrypt, ECDSA sign); also finds kmsd's RSA
 * import pairs by modulus. Runs in its own process because
 * SoftHSM2 reads SOFTHSM2_CONF at C_Initialize and each test stack has its own conf.
 * usage: node byok-source.js LABEL PIN JSON-COMMAND
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import pkcs11js from 'pkcs11js';
import { SOFTHSM_LIB } from './paths.js';
import type { TestStack } from './stack.js';

const P = pkcs11js;

export type SourceCommand =
  | { op: 'aes'; label: string; id: string; extractable: boolean }
  | { op: 'ec'; label: string; id: string; curveOid: string }
  | { op: 'gcm-encrypt'; label: string; iv: string; aad: string; plaintext: string }
  | { op: 'ecdsa-sign'; label: string; message: string }
  | { op: 'rsa-private-keys'; idPrefix: string };

/** Runs one command against the stack's token `tokenLabel`; returns its JSON answer. */
export function sourceToken<T = any>(stack: TestStack, tokenLabel: string, cmd: SourceCommand): T {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), tokenLabel, '1234', JSON.stringify(cmd)], { env: stack.env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`byok-source ${cmd.op} failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

function find(p: pkcs11js.PKCS11, s: pkcs11js.Handle, cls: number, label: string): pkcs11js.Handle {
  p.C_FindObjectsInit(s, [
    { type: P.CKA_CLASS, value: cls },
    { type: P.CKA_LABEL, value: label },
  ]);
  const [h] = p.C_FindObjects(s, 1);
  p.C_FindObjectsFinal(s);
  if (!h) throw new Error(`no object ${label}`);
  return h;
}

function main(tokenLabel: string, pin: string, cmd: SourceCommand): unknown {
  const p = new pkcs11js.PKCS11();
  p.load(SOFTHSM_LIB);
  p.C_Initialize({ flags: P.CKF_OS_LOCKING_OK });
  try {
    const slot = p.C_GetSlotList(true).find((x) => p.C_GetTokenInfo(x).label.trim() === tokenLabel);
    if (!slot) throw new Error(`no token ${tokenLabel}`);
    const s = p.C_OpenSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION);
    p.C_Login(s, P.CKU_USER, pin);
    const common = (label: string, id: string) => [
      { type: P.CKA_TOKEN, value: true },
      { type: P.CKA_LABEL, value: label },
      { type: P.CKA_ID, value: Buffer.from(id) },
    ];
    switch (cmd.op) {
      case 'aes':
        // An ordinary HSM key: sensitive; extractable so that it can be wrapped for migration.
        p.C_GenerateKey(s, { mechanism: P.CKM_AES_KEY_GEN }, [
          { type: P.CKA_CLASS, value: P.CKO_SECRET_KEY },
          { type: P.CKA_KEY_TYPE, value: P.CKK_AES },
          ...common(cmd.label, cmd.id),
          { type: P.CKA_PRIVATE, value: true },
          { type: P.CKA_SENSITIVE, value: true },
          { type: P.CKA_EXTRACTABLE, value: cmd.extractable },
          { type: P.CKA_VALUE_LEN, value: 32 },
          { type: P.CKA_ENCRYPT, value: true },
          { type: P.CKA_DECRYPT, value: true },
        ]);
        return {};
      case 'ec': {
        const pair = p.C_GenerateKeyPair(
          s,
          { mechanism: P.CKM_EC_KEY_PAIR_GEN },
          [...common(cmd.label, cmd.id), { type: P.CKA_EC_PARAMS, value: Buffer.from(cmd.curveOid, 'hex') }, { type: P.CKA_VERIFY, value: true }],
          [
            ...common(cmd.label, cmd.id),
            { type: P.CKA_PRIVATE, value: true },
            { type: P.CKA_SENSITIVE, value: true },
            { type: P.CKA_EXTRACTABLE, value: true },
            { type: P.CKA_SIGN, value: true },
          ],
        );
        const [point] = p.C_GetAttributeValue(s, pair.publicKey, [{ type: P.CKA_EC_POINT }]);
        return { ecPoint: (point!.value as Buffer).toString('hex') };
      }
      case 'gcm-encrypt': {
        const h = find(p, s, P.CKO_SECRET_KEY, cmd.label);
        const iv = Buffer.from(cmd.iv, 'base64');
        const aad = Buffer.from(cmd.aad, 'base64');
        const pt = Buffer.from(cmd.plaintext, 'base64');
        p.C_EncryptInit(s, { mechanism: P.CKM_AES_GCM, parameter: { type: P.CK_PARAMS_AES_GCM, iv, aad, ivBits: 96, tagBits: 128 } as pkcs11js.AesGCM }, h);
        const ct = p.C_Encrypt(s, pt, Buffer.alloc(pt.length + 16));
        return { ciphertext: ct.toString('base64') };
      }
      case 'rsa-private-keys': {
        // kmsd's own import/wrapping pairs, found by the modulus the API handed out.
        p.C_FindObjectsInit(s, [
          { type: P.CKA_CLASS, value: P.CKO_PRIVATE_KEY },
          { type: P.CKA_KEY_TYPE, value: P.CKK_RSA },
        ]);
        const all = p.C_FindObjects(s, 100000);
        p.C_FindObjectsFinal(s);
        return all
          .flatMap((h) => {
            try {
              const [id, n] = p.C_GetAttributeValue(s, h, [{ type: P.CKA_ID }, { type: P.CKA_MODULUS }]);
              return [{ id: (id!.value as Buffer).toString(), modulus: (n!.value as Buffer).toString('hex') }];
            } catch (e) {
              // destroyed by the daemon (its sweep) between the search and this read: not there
              if (e instanceof pkcs11js.Pkcs11Error && e.code === P.CKR_OBJECT_HANDLE_INVALID) return [];
              throw e;
            }
          })
          .filter((o) => o.id.startsWith(cmd.idPrefix));
      }
      case 'ecdsa-sign': {
        const h = find(p, s, P.CKO_PRIVATE_KEY, cmd.label);
        p.C_SignInit(s, { mechanism: P.CKM_ECDSA }, h);
        const digest = createHash('sha256').update(Buffer.from(cmd.message, 'base64')).digest();
        return { signature: p.C_Sign(s, digest, Buffer.alloc(256)).toString('base64') };
      }
    }
  } finally {
    p.C_Finalize();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const out = main(process.argv[2]!, process.argv[3]!, JSON.parse(process.argv[4]!) as SourceCommand);
  process.stdout.write(JSON.stringify(out));
}
