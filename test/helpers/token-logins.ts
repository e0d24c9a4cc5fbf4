/**
 * Opens, logs in to and closes a SoftHSM2 token over and over for a while, in its own process:
 * what every starting kmsd process, worker or kmsctl run does to the token. SoftHSM2 2.6.1
 * rewrites the token's own file on each login; another process that reads that file at the
 * same moment can be left with a token that answers CKR_GENERAL_ERROR to everything until it
 * re-initialises the library (measured). Prints how many rounds it made.
 * usage: node token-logins.js LABEL PIN MILLISECONDS
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pkcs11js from 'pkcs11js';
import { SOFTHSM_LIB } from './paths.js';
import type { TestStack } from './stack.js';

/** Starts the loop in a child process; resolves to its round count when it ends. */
export function tokenLogins(stack: TestStack, label: string, ms: number): { proc: ChildProcess; done: Promise<number> } {
  const proc = spawn(process.execPath, [fileURLToPath(import.meta.url), label, '1234', String(ms)], { env: stack.env, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  const done = new Promise<number>((resolve) => proc.on('exit', () => resolve(Number(out.trim()) || 0)));
  return { proc, done };
}

function main(label: string, pin: string, ms: number): void {
  const p = new pkcs11js.PKCS11();
  p.load(SOFTHSM_LIB);
  const until = Date.now() + ms;
  let rounds = 0;
  while (Date.now() < until) {
    try {
      p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
      const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === label);
      if (slot) p.C_Login(p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION), pkcs11js.CKU_USER, pin);
    } catch {
      /* this process may see the same fault; it starts over */
    }
    try {
      p.C_Finalize();
    } catch {
      /* not initialised */
    }
    rounds++;
  }
  process.stdout.write(`${rounds}\n`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main(process.argv[2]!, process.argv[3]!, Number(process.argv[4]));
