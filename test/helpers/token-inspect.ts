/**
 * Lists a SoftHSM2 token's objects as JSON, in its own process (SoftHSM2 reads SOFTHSM2_CONF at
 * C_Initialize, and each test stack has its own conf). Used by tests to look inside the token.
 * usage: node token-inspect.js LABEL PIN
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pkcs11js from 'pkcs11js';
import { SOFTHSM_LIB } from './paths.js';
import type { TestStack } from './stack.js';

export interface TokenObject {
  cls: 'secret' | 'private' | 'public' | 'other';
  id: string;
  label: string;
  keyType: number;
  sensitive?: boolean;
  extractable?: boolean;
  private: boolean;
  token: boolean;
}

export function inspectToken(stack: TestStack, label: string): TokenObject[] {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), label, '1234'], { env: stack.env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`token-inspect failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as TokenObject[];
}

function main(label: string, pin: string): void {
  const p = new pkcs11js.PKCS11();
  p.load(SOFTHSM_LIB);
  p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === label);
  if (!slot) throw new Error(`no token ${label}`);
  const s = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
  p.C_Login(s, pkcs11js.CKU_USER, pin);
  p.C_FindObjectsInit(s, []);
  const handles = p.C_FindObjects(s, 100000);
  p.C_FindObjectsFinal(s);
  const bool = (b: Buffer | undefined) => (b ? b[0] === 1 : undefined);
  const out: TokenObject[] = handles.map((h) => {
    let attrs;
    try {
      attrs = p.C_GetAttributeValue(s, h, [
      { type: pkcs11js.CKA_CLASS },
      { type: pkcs11js.CKA_ID },
      { type: pkcs11js.CKA_LABEL },
      { type: pkcs11js.CKA_KEY_TYPE },
      { type: pkcs11js.CKA_PRIVATE },
      { type: pkcs11js.CKA_TOKEN },
      ]);
    } catch (e) {
      // e.g. an object file SoftHSM2 was writing when its process was killed
      return { cls: 'other', id: '', label: `unreadable: ${(e as Error).message.split('\n')[0]}`, keyType: -1, private: true, token: true };
    }
    const [c, id, lbl, kt, priv, tok] = attrs;
    const cls = (c!.value as Buffer).readUInt32LE(0);
    const o: TokenObject = {
      cls: cls === pkcs11js.CKO_SECRET_KEY ? 'secret' : cls === pkcs11js.CKO_PRIVATE_KEY ? 'private' : cls === pkcs11js.CKO_PUBLIC_KEY ? 'public' : 'other',
      id: (id!.value as Buffer).toString(),
      label: (lbl!.value as Buffer).toString(),
      keyType: (kt!.value as Buffer).readUInt32LE(0),
      private: bool(priv!.value as Buffer)!,
      token: bool(tok!.value as Buffer)!,
    };
    if (o.cls === 'secret' || o.cls === 'private') {
      const [se, ex] = p.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_SENSITIVE }, { type: pkcs11js.CKA_EXTRACTABLE }]);
      o.sensitive = bool(se!.value as Buffer);
      o.extractable = bool(ex!.value as Buffer);
    }
    return o;
  });
  p.C_Finalize();
  process.stdout.write(JSON.stringify(out));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main(process.argv[2]!, process.argv[3]!);
