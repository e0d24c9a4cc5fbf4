/**
 * Fills a SoftHSM2 token with `count` inert secret-key objects (CKA_ID `test/pad`, never one of
 * kmsd's), so a daemon's start meets a large token. One object is created through PKCS#11 in
 * its own process (SoftHSM2 reads SOFTHSM2_CONF at C_Initialize); the rest are copies of its
 * file in the file store under new object names (one C_CreateObject writes a file: thousands
 * through the token would take minutes). Run while no daemon uses the token.
 * usage: node token-pad.js LABEL PIN COUNT
 */
import { spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { copyFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pkcs11js from 'pkcs11js';
import { SOFTHSM_LIB } from './paths.js';
import type { TestStack } from './stack.js';

export function padToken(stack: TestStack, label: string, count: number): void {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), label, '1234', String(count), stack.tokenDir], { env: stack.env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`token-pad failed: ${r.stderr}`);
}

function objectFiles(tokenDir: string): Set<string> {
  const out = new Set<string>();
  for (const d of readdirSync(tokenDir)) for (const f of readdirSync(path.join(tokenDir, d))) if (f.endsWith('.object') && f !== 'token.object') out.add(path.join(tokenDir, d, f));
  return out;
}

function main(label: string, pin: string, count: number, tokenDir: string): void {
  const before = objectFiles(tokenDir);
  const p = new pkcs11js.PKCS11();
  p.load(SOFTHSM_LIB);
  p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === label);
  if (!slot) throw new Error(`no token ${label}`);
  const s = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  p.C_Login(s, pkcs11js.CKU_USER, pin);
  p.C_CreateObject(s, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_GENERIC_SECRET },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_ID, value: Buffer.from('test/pad') },
    { type: pkcs11js.CKA_LABEL, value: 'test pad' },
    { type: pkcs11js.CKA_VALUE, value: randomBytes(32) },
  ]);
  p.C_Finalize();
  const made = [...objectFiles(tokenDir)].filter((f) => !before.has(f));
  if (made.length !== 1) throw new Error(`expected one new object file, found ${made.length}`);
  const dir = path.dirname(made[0]!);
  for (let i = 1; i < count; i++) {
    const name = randomUUID();
    copyFileSync(made[0]!, path.join(dir, `${name}.object`));
    writeFileSync(path.join(dir, `${name}.lock`), '');
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main(process.argv[2]!, process.argv[3]!, Number(process.argv[4]), process.argv[5]!);
