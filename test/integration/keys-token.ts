import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { sharedMongoUri } from '../helpers/hooks.js';
import { ROOT, SOFTHSM_LIB } from '../helpers/paths.js';
import { PIN, type TestStack } from '../helpers/stack.js';

/**
 * Looks into a test stack's SoftHSM2 token from outside the daemon: a separate process (pkcs11js or
 * the OpenSC pkcs11-tool CLI) logs in and reads object attributes with C_GetAttributeValue. Used by
 * the key-management and crypto suites to prove what is (and is not) stored on the token.
 */
export interface TokenObject {
  cls: number;
  keyType: number;
  /** CKA_ID as UTF-8 (kmsd writes `kmsd/k/<identity>/…`). */
  id: string;
  label: string;
  token: boolean;
  private: boolean;
  sensitive?: boolean;
  alwaysSensitive?: boolean;
  extractable?: boolean;
  neverExtractable?: boolean;
  valueLen?: number;
  modulusBits?: number;
  ecParams?: string;
}

export const CKO = { PUBLIC: 2, PRIVATE: 3, SECRET: 4 } as const;
export const CKK = { RSA: 0x0, EC: 0x3, GENERIC_SECRET: 0x10, AES: 0x1f, EC_EDWARDS: 0x40 } as const;

const INSPECT = `
import pkcs11js from 'pkcs11js';
const [lib, label, pin] = process.argv.slice(1);
const p = new pkcs11js.PKCS11();
p.load(lib);
p.C_Initialize();
try {
  const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === label);
  if (slot === undefined) throw new Error('no token ' + label);
  const s = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  p.C_Login(s, pkcs11js.CKU_USER, pin);
  p.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_TOKEN, value: true }]);
  const handles = [];
  for (;;) { const b = p.C_FindObjects(s, 500); if (!b.length) break; handles.push(...b); }
  p.C_FindObjectsFinal(s);
  const attr = (h, type) => { try { return p.C_GetAttributeValue(s, h, [{ type }])[0].value; } catch { return undefined; } };
  const bool = (h, type) => { const v = attr(h, type); return v === undefined ? undefined : v[0] === 1; };
  const ulong = (h, type) => { const v = attr(h, type); return v === undefined ? undefined : v.readUInt32LE(0); };
  const out = handles.map((h) => ({
    cls: ulong(h, pkcs11js.CKA_CLASS),
    keyType: ulong(h, pkcs11js.CKA_KEY_TYPE),
    id: (attr(h, pkcs11js.CKA_ID) ?? Buffer.alloc(0)).toString('utf8'),
    label: (attr(h, pkcs11js.CKA_LABEL) ?? Buffer.alloc(0)).toString('utf8'),
    token: bool(h, pkcs11js.CKA_TOKEN),
    private: bool(h, pkcs11js.CKA_PRIVATE),
    sensitive: bool(h, pkcs11js.CKA_SENSITIVE),
    alwaysSensitive: bool(h, pkcs11js.CKA_ALWAYS_SENSITIVE),
    extractable: bool(h, pkcs11js.CKA_EXTRACTABLE),
    neverExtractable: bool(h, pkcs11js.CKA_NEVER_EXTRACTABLE),
    valueLen: ulong(h, pkcs11js.CKA_VALUE_LEN),
    modulusBits: ulong(h, pkcs11js.CKA_MODULUS_BITS),
    ecParams: attr(h, pkcs11js.CKA_EC_PARAMS)?.toString('hex'),
  }));
  p.C_Logout(s);
  p.C_CloseSession(s);
  process.stdout.write(JSON.stringify(out));
} finally {
  p.C_Finalize();
}
`;

/** Every token object (public, private and secret) on the stack's token, read by a separate process. */
export function tokenObjects(stack: TestStack, label = 'kmsd-nl-01'): TokenObject[] {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', INSPECT, SOFTHSM_LIB, label, PIN], {
    env: stack.env,
    cwd: ROOT,
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`token inspection failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as TokenObject[];
}

/** The objects of one key (all versions): CKA_ID starts with `kmsd/k/<identity>/`. */
export function keyObjects(stack: TestStack, identity: string, label = 'kmsd-nl-01'): TokenObject[] {
  return tokenObjects(stack, label).filter((o) => o.id.startsWith(`kmsd/k/${identity}/`));
}

export interface ToolObject {
  header: string;
  id: string;
  access: string[];
}

/** `pkcs11-tool --list-objects` (OpenSC), parsed into one entry per object. */
export function pkcs11ToolObjects(stack: TestStack, login: boolean, label = 'kmsd-nl-01'): ToolObject[] {
  const args = ['--module', SOFTHSM_LIB, '--token-label', label, '--list-objects'];
  if (login) args.push('--login', '--pin', PIN);
  const r = spawnSync('pkcs11-tool', args, { env: stack.env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`pkcs11-tool failed: ${r.stderr}`);
  const out: ToolObject[] = [];
  let cur: ToolObject | undefined;
  for (const line of r.stdout.split('\n')) {
    if (/^(Public|Private|Secret|Data|Certificate) .*Object/.test(line)) {
      cur = { header: line.trim(), id: '', access: [] };
      out.push(cur);
      continue;
    }
    if (!cur) continue;
    const id = /^\s+ID:\s+([0-9a-f]+)/.exec(line);
    if (id) cur.id = Buffer.from(id[1]!, 'hex').toString('utf8');
    const access = /^\s+Access:\s+(.*)$/.exec(line);
    if (access) cur.access = access[1]!.split(',').map((s) => s.trim());
  }
  return out;
}

/**
 * A database of its own on the shared MongoDB-compatible server: Agenda keeps one job document
 * per name, so daemons of different stacks on one database would share (and steal) the trigger.
 */
export function ownMongoUri(name: string): string {
  return sharedMongoUri().replace(/\/[^/?]*(\?|$)/, `/kmsd_${name.replace(/\W/g, '_')}_${randomBytes(3).toString('hex')}$1`);
}
