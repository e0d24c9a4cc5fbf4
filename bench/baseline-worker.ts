/**
 * Baseline child process: raw pkcs11js loops on a SoftHSM2 token (no kmsd code), and the
 * node:crypto software ceiling. One job per message, one thread, synchronous calls — the
 * HSM's own ceiling per core. Started by bench/run.ts with child_process.fork.
 *
 * message in:  BaselineJob        message out: { ok: true, result: BaselineResult } | { ok: false, error }
 */
import { createCipheriv, randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';

const CKM_EDDSA = 0x1057;
const CKK_EC_EDWARDS = 0x40;
const CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055;
const ED25519_PARAMS = Buffer.from('06032b6570', 'hex');
const P256_PARAMS = Buffer.from('06082a8648ce3d030107', 'hex');

export type BaselineKind =
  | 'raw-pkcs11-aes'
  | 'raw-pkcs11-aes-token-object'
  | 'raw-pkcs11-keygen'
  | 'raw-pkcs11-ed25519'
  | 'raw-pkcs11-ed25519-token-object'
  | 'raw-pkcs11-ecdsa-p256'
  | 'raw-pkcs11-ecdsa-p256-token-object'
  | 'node-crypto-aes'
  | 'bare-pkcs11-open';

export interface BaselineJob {
  kind: BaselineKind;
  durationMs: number;
  /** token to use (SOFTHSM2_CONF comes from the environment) */
  module?: string;
  label?: string;
  pin?: string;
  /** keygen: stop after this many keys even if time is left (every key is a file) */
  maxOps?: number;
}

export interface BaselineResult {
  kind: BaselineKind;
  ops: number;
  seconds: number;
  perSecond: number;
  /** bare-pkcs11-open: the process's RSS (bytes) with the token open and every CKA_ID read */
  rssBytes?: number;
}

/**
 * `bare-pkcs11-open`: what holding the token open costs a process that does nothing else —
 * C_Initialize, log in, one search over all objects, CKA_ID of each (what any index of the
 * token needs). ops = objects, seconds = the whole open; RSS measured afterwards.
 */
function bareOpen(job: BaselineJob): BaselineResult {
  const t = performance.now();
  const { p11, session } = openToken(job);
  p11.C_FindObjectsInit(session, []);
  let n = 0;
  let bytes = 0;
  for (;;) {
    const batch = p11.C_FindObjects(session, 1000);
    if (batch.length === 0) break;
    for (const h of batch) {
      const [a] = p11.C_GetAttributeValue(session, h, [{ type: P.CKA_ID }]);
      bytes += (a?.value as Buffer | undefined)?.length ?? 0;
      n++;
    }
  }
  p11.C_FindObjectsFinal(session);
  const seconds = (performance.now() - t) / 1000;
  if (bytes < 0) console.log(bytes);
  globalThis.gc?.();
  // The token stays open (as a daemon holds it) while the RSS is read.
  return { kind: job.kind, ops: n, seconds, perSecond: n / seconds, rssBytes: process.memoryUsage().rss };
}

const P = pkcs11js;
const SESSION_FLAGS = P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION;

function openToken(job: BaselineJob): { p11: pkcs11js.PKCS11; session: pkcs11js.Handle; close(): void } {
  const p11 = new P.PKCS11();
  p11.load(job.module!);
  let ownInit = true;
  try {
    p11.C_Initialize({ flags: P.CKF_OS_LOCKING_OK });
  } catch (e) {
    if (!(e instanceof P.Pkcs11Error && e.code === 0x191)) throw e; // already initialised in this process
    ownInit = false;
  }
  const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === job.label);
  if (!slot) throw new Error(`no token labelled ${job.label}`);
  const session = p11.C_OpenSession(slot, SESSION_FLAGS);
  try {
    p11.C_Login(session, P.CKU_USER, job.pin!);
  } catch (e) {
    if (!(e instanceof P.Pkcs11Error && e.code === 0x100)) throw e;
  }
  return {
    p11,
    session,
    close() {
      try {
        p11.C_CloseSession(session);
      } finally {
        if (ownInit) p11.C_Finalize();
      }
    },
  };
}

const benchId = (what: string) => Buffer.from(`bench/${what}/${process.pid}.${randomBytes(4).toString('hex')}`);

function aesTemplate(token: boolean, what: string): pkcs11js.Template {
  return [
    { type: P.CKA_CLASS, value: P.CKO_SECRET_KEY },
    { type: P.CKA_KEY_TYPE, value: P.CKK_AES },
    { type: P.CKA_TOKEN, value: token },
    { type: P.CKA_PRIVATE, value: true },
    { type: P.CKA_SENSITIVE, value: true },
    { type: P.CKA_EXTRACTABLE, value: false },
    { type: P.CKA_ID, value: benchId(what) },
    { type: P.CKA_LABEL, value: `bench-${what}` },
    { type: P.CKA_VALUE_LEN, value: 32 },
    { type: P.CKA_ENCRYPT, value: true },
    { type: P.CKA_DECRYPT, value: true },
  ];
}

/** Runs `op` until durationMs passed (checking the clock every `every` ops) or maxOps reached. */
function timed(durationMs: number, every: number, op: () => void, maxOps = Infinity): { ops: number; seconds: number } {
  const t0 = performance.now();
  const end = t0 + durationMs;
  let ops = 0;
  for (;;) {
    for (let i = 0; i < every && ops < maxOps; i++, ops++) op();
    const now = performance.now();
    if (now >= end || ops >= maxOps) return { ops, seconds: (now - t0) / 1000 };
  }
}

/**
 * AES-GCM on a token key, either on the token object itself or (raw-pkcs11-aes) on a session
 * copy of it — what kmsd operates on, because SoftHSM2's file store re-checks a token object's
 * file on every C_EncryptInit. The faster of the two is the HSM's real ceiling per core.
 */
function rawAes(job: BaselineJob, onTokenObject: boolean): { ops: number; seconds: number } {
  const t = openToken(job);
  try {
    const tokenKey = t.p11.C_GenerateKey(t.session, { mechanism: P.CKM_AES_KEY_GEN }, aesTemplate(true, 'aes'));
    const key = onTokenObject ? tokenKey : t.p11.C_CopyObject(t.session, tokenKey, [{ type: P.CKA_TOKEN, value: false }]);
    try {
      const plaintext = randomBytes(32);
      const out = Buffer.alloc(48);
      let n = 0;
      const iv = Buffer.alloc(12);
      const aad = Buffer.alloc(0);
      const op = () => {
        iv.writeUInt32BE(n++, 8);
        t.p11.C_EncryptInit(
          t.session,
          { mechanism: P.CKM_AES_GCM, parameter: { type: P.CK_PARAMS_AES_GCM, iv, aad, ivBits: 96, tagBits: 128 } as pkcs11js.AesGCM },
          key,
        );
        t.p11.C_Encrypt(t.session, plaintext, out);
      };
      timed(Math.min(500, job.durationMs / 4), 100, op); // warm-up
      return timed(job.durationMs, 100, op);
    } finally {
      if (!key.equals(tokenKey)) t.p11.C_DestroyObject(t.session, key);
      t.p11.C_DestroyObject(t.session, tokenKey);
    }
  } finally {
    t.close();
  }
}

function rawKeygen(job: BaselineJob): { ops: number; seconds: number } {
  const t = openToken(job);
  const made: pkcs11js.Handle[] = [];
  try {
    return timed(job.durationMs, 1, () => made.push(t.p11.C_GenerateKey(t.session, { mechanism: P.CKM_AES_KEY_GEN }, aesTemplate(true, 'keygen'))), job.maxOps);
  } finally {
    for (const h of made) t.p11.C_DestroyObject(t.session, h);
    t.close();
  }
}

/**
 * The raw one-thread signing loop on a token key pair: Ed25519 (32 B message) or ECDSA P-256 (a
 * SHA-256 digest), on a session copy of the private key — what kmsd signs with, for the same
 * reason as raw-pkcs11-aes (ECDSA ~50 µs a signature on the copy, ~60 µs on the token object,
 * measured) — or (`onTokenObject`, info) on the token object itself.
 */
function rawSign(job: BaselineJob, curve: 'ed25519' | 'p256', onTokenObject: boolean): { ops: number; seconds: number } {
  const t = openToken(job);
  const id = benchId(curve === 'ed25519' ? 'ed25519' : 'ecdsa-p256');
  const keyType = curve === 'ed25519' ? CKK_EC_EDWARDS : P.CKK_EC;
  const pair = t.p11.C_GenerateKeyPair(
    t.session,
    { mechanism: curve === 'ed25519' ? CKM_EC_EDWARDS_KEY_PAIR_GEN : P.CKM_EC_KEY_PAIR_GEN },
    [
      { type: P.CKA_CLASS, value: P.CKO_PUBLIC_KEY },
      { type: P.CKA_KEY_TYPE, value: keyType },
      { type: P.CKA_TOKEN, value: true },
      { type: P.CKA_EC_PARAMS, value: curve === 'ed25519' ? ED25519_PARAMS : P256_PARAMS },
      { type: P.CKA_VERIFY, value: true },
      { type: P.CKA_ID, value: id },
    ],
    [
      { type: P.CKA_CLASS, value: P.CKO_PRIVATE_KEY },
      { type: P.CKA_KEY_TYPE, value: keyType },
      { type: P.CKA_TOKEN, value: true },
      { type: P.CKA_PRIVATE, value: true },
      { type: P.CKA_SENSITIVE, value: true },
      { type: P.CKA_EXTRACTABLE, value: false },
      { type: P.CKA_SIGN, value: true },
      { type: P.CKA_ID, value: id },
    ],
  );
  const key = onTokenObject ? pair.privateKey : t.p11.C_CopyObject(t.session, pair.privateKey, [{ type: P.CKA_TOKEN, value: false }]);
  try {
    const data = randomBytes(32);
    const out = Buffer.alloc(64);
    const mechanism = curve === 'ed25519' ? CKM_EDDSA : P.CKM_ECDSA;
    const op = () => {
      t.p11.C_SignInit(t.session, { mechanism }, key);
      t.p11.C_Sign(t.session, data, out);
    };
    timed(Math.min(500, job.durationMs / 4), 20, op);
    return timed(job.durationMs, 20, op);
  } finally {
    if (!key.equals(pair.privateKey)) t.p11.C_DestroyObject(t.session, key);
    t.p11.C_DestroyObject(t.session, pair.privateKey);
    t.p11.C_DestroyObject(t.session, pair.publicKey);
    t.close();
  }
}

function nodeAes(job: BaselineJob): { ops: number; seconds: number } {
  const key = randomBytes(32);
  const plaintext = randomBytes(32);
  const iv = Buffer.alloc(12);
  let n = 0;
  let sink = 0;
  const op = () => {
    iv.writeUInt32BE(n++, 8);
    const c = createCipheriv('aes-256-gcm', key, iv);
    const ct = Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
    sink += ct.length;
  };
  timed(Math.min(500, job.durationMs / 4), 100, op);
  const r = timed(job.durationMs, 100, op);
  if (sink < 0) console.log(sink);
  return r;
}

export function runBaseline(job: BaselineJob): BaselineResult {
  if (job.kind === 'bare-pkcs11-open') return bareOpen(job);
  const r =
    job.kind === 'raw-pkcs11-aes' || job.kind === 'raw-pkcs11-aes-token-object'
      ? rawAes(job, job.kind === 'raw-pkcs11-aes-token-object')
      : job.kind === 'raw-pkcs11-keygen'
        ? rawKeygen(job)
        : job.kind === 'raw-pkcs11-ed25519' || job.kind === 'raw-pkcs11-ed25519-token-object'
          ? rawSign(job, 'ed25519', job.kind === 'raw-pkcs11-ed25519-token-object')
          : job.kind === 'raw-pkcs11-ecdsa-p256' || job.kind === 'raw-pkcs11-ecdsa-p256-token-object'
            ? rawSign(job, 'p256', job.kind === 'raw-pkcs11-ecdsa-p256-token-object')
            : nodeAes(job);
  return { kind: job.kind, ops: r.ops, seconds: r.seconds, perSecond: r.ops / r.seconds };
}

if (process.send) {
  process.on('message', (job: BaselineJob) => {
    try {
      process.send!({ ok: true, result: runBaseline(job) });
    } catch (e) {
      process.send!({ ok: false, error: (e as Error).stack ?? String(e) });
    }
  });
}
