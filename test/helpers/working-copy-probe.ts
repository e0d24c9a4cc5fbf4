/**
 * Exercises RegionToken's session working copies on a real SoftHSM2 token, in its own process
 * (SoftHSM2 reads SOFTHSM2_CONF at C_Initialize), and reports what it saw as JSON. Session
 * objects are only visible inside the process that made them, so this is the only place a
 * test can look at them. usage: node working-copy-probe.js LABEL PIN
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import pkcs11js from 'pkcs11js';
import { RegionToken } from '../../src/token/region-token.js';
import { secretKeyTemplate } from '../../src/token/templates.js';
import { SOFTHSM_LIB } from './paths.js';
import type { TestStack } from './stack.js';

export interface WorkingCopyReport {
  /** after one encrypt with key A */
  afterFirst: { copies: number; sessionObjectsA: number; attrs: { token: boolean; sensitive: boolean; extractable: boolean } };
  /** the copy's ciphertext, decrypted directly with the token object (no copy involved) */
  tokenObjectDecrypts: boolean;
  /** a ciphertext made by the token object, decrypted through the copy */
  copyDecrypts: boolean;
  /** a tampered ciphertext through the copy: undefined (tag check failed) */
  tamperedRejected: boolean;
  /** after keys B and C were used with a cap of 2 */
  afterCap: { copies: number; sessionObjects: number; sessionObjectsA: number; allThreeEncrypt: boolean };
  /** after destroy(A), whose copy is live */
  afterDestroy: { copies: number; sessionObjectsA: number; tokenObjectsA: number };
  /** with workingCopies 0: operations use the token object, no copy */
  disabled: { copies: number; sessionObjects: number };
  /** private signing keys (Ed25519, ECDSA P-256), async path and signing threads */
  signing: {
    /** per key type: session copies of its private key after signing, their attributes, and whether the signature verifies */
    async: Record<string, { sessionCopies: number; attrs: { token: boolean; sensitive: boolean; extractable: boolean }; verifies: boolean }>;
    threads: Record<string, { sessionCopies: number; verifies: boolean }>;
    /**
     * signOnLoop (a process per core): per key type, session copies, whether the signature
     * verifies and whether it was made on the event loop; `rsaOnLoop`: whether an RSA signature
     * was (it must not be: too slow for the loop); `budget`: of many Ed25519 signatures requested
     * in one event-loop turn, how many were done when a timer set in that turn ran (the loop
     * yields between runs of its budget), how many in all on the loop, and how many verify.
     */
    loop: {
      keys: Record<string, { sessionCopies: number; verifies: boolean; onLoop: boolean }>;
      rsaOnLoop: boolean;
      budget: { started: number; doneWhenTimerRan: number; onLoop: number; verify: number };
      stillOnLoop: boolean;
    };
    /** after the keys were destroyed: their private session copies */
    afterDestroy: number;
  };
  /** a key made with CKA_COPYABLE false: used directly, and forgetting it never destroys it */
  notCopyable: { encrypts: boolean; copies: number; sessionObjects: number; tokenObjectsAfterForget: number; encryptsAfterForget: boolean };
}

export function probeWorkingCopies(stack: TestStack, label: string): WorkingCopyReport {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), label, '1234'], { env: stack.env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`working-copy-probe failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as WorkingCopyReport;
}

async function main(label: string, pin: string): Promise<WorkingCopyReport> {
  const settings = { region: 'probe', modulePath: SOFTHSM_LIB, label, pin, sessions: 2 };
  const t = new RegionToken({ ...settings, workingCopies: 2 });
  t.connect();
  // An independent session of the same process: sees every session object this process made.
  const p = new pkcs11js.PKCS11();
  p.load(SOFTHSM_LIB);
  try {
    p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch {
    /* already initialised by the RegionToken: the library is per process */
  }
  const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === label)!;
  const s = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
  const find = (id: Buffer | undefined, token: boolean, cls: number = pkcs11js.CKO_SECRET_KEY) => {
    const template: pkcs11js.Template = [
      { type: pkcs11js.CKA_CLASS, value: cls },
      { type: pkcs11js.CKA_TOKEN, value: token },
    ];
    if (id) template.push({ type: pkcs11js.CKA_ID, value: id });
    p.C_FindObjectsInit(s, template);
    const hs = p.C_FindObjects(s, 1000);
    p.C_FindObjectsFinal(s);
    return hs;
  };
  const gcm = (iv: Buffer) => ({
    mechanism: pkcs11js.CKM_AES_GCM,
    parameter: { type: pkcs11js.CK_PARAMS_AES_GCM, iv, aad: Buffer.from('aad'), ivBits: 96, tagBits: 128 } as pkcs11js.AesGCM,
  });
  const ids = ['a', 'b', 'c'].map((n) => Buffer.from(`probe/${n}/${randomBytes(4).toString('hex')}`));
  const [a, b, c] = ids as [Buffer, Buffer, Buffer];
  for (const id of ids) await t.generate({ kind: 'aes', bytes: 32 }, { ckaId: id, label: 'probe', extractable: false });
  const plaintext = Buffer.from('working copies stay in the token');
  const iv = randomBytes(12);
  const aad = Buffer.from('aad');

  const ct = t.aesGcmEncrypt(a, iv, aad, plaintext);
  const copyA = find(a, false);
  const [tok, sens, ext] = p.C_GetAttributeValue(s, copyA[0]!, [
    { type: pkcs11js.CKA_TOKEN },
    { type: pkcs11js.CKA_SENSITIVE },
    { type: pkcs11js.CKA_EXTRACTABLE },
  ]);
  const bool = (x: pkcs11js.Attribute) => (x.value as Buffer)[0] === 1;
  const afterFirst = { copies: t.workingCopies, sessionObjectsA: copyA.length, attrs: { token: bool(tok!), sensitive: bool(sens!), extractable: bool(ext!) } };

  const original = find(a, true)[0]!;
  p.C_DecryptInit(s, gcm(iv), original);
  const viaToken = p.C_Decrypt(s, ct, Buffer.alloc(ct.length));
  const iv2 = randomBytes(12);
  p.C_EncryptInit(s, gcm(iv2), original);
  const ct2 = p.C_Encrypt(s, plaintext, Buffer.alloc(plaintext.length + 16));
  const viaCopy = t.aesGcmDecrypt(a, iv2, aad, ct2);
  const tampered = Buffer.from(ct2);
  tampered[0]! ^= 1;

  const report: Partial<WorkingCopyReport> = {
    afterFirst,
    tokenObjectDecrypts: viaToken.equals(plaintext),
    copyDecrypts: viaCopy?.equals(plaintext) === true,
    tamperedRejected: t.aesGcmDecrypt(a, iv2, aad, tampered) === undefined,
  };

  const outB = t.aesGcmEncrypt(b, iv, aad, plaintext);
  const outC = t.aesGcmEncrypt(c, iv, aad, plaintext);
  const again = t.aesGcmEncrypt(a, iv, aad, plaintext); // A's copy was evicted: a new one replaces B's
  report.afterCap = {
    copies: t.workingCopies,
    sessionObjects: find(undefined, false).length,
    sessionObjectsA: find(a, false).length,
    allThreeEncrypt: outB.length === plaintext.length + 16 && outC.length === outB.length && again.equals(ct),
  };

  await t.destroy(a);
  report.afterDestroy = { copies: t.workingCopies, sessionObjectsA: find(a, false).length, tokenObjectsA: find(a, true).length };
  await t.destroy(b);
  await t.destroy(c);

  // A key the token refuses to copy (made here, in the probe's own session, like another tool would).
  const n = Buffer.from(`probe/n/${randomBytes(4).toString('hex')}`);
  const rw = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  const { mechanism, template } = secretKeyTemplate({ kind: 'aes', bytes: 32 }, { ckaId: n, label: 'probe', extractable: false });
  p.C_GenerateKey(rw, { mechanism }, [...template, { type: 0x171 /* CKA_COPYABLE */, value: false }]);
  const copiesBefore = t.workingCopies;
  const encN = t.aesGcmEncrypt(n, iv, aad, plaintext);
  const copiesN = t.workingCopies - copiesBefore;
  const sessionN = find(n, false).length;
  t.forget(n);
  report.notCopyable = {
    encrypts: encN.length === plaintext.length + 16,
    copies: copiesN,
    sessionObjects: sessionN,
    tokenObjectsAfterForget: find(n, true).length,
    encryptsAfterForget: t.aesGcmEncrypt(n, iv, aad, plaintext).equals(encN),
  };
  await t.destroy(n);
  t.close();

  // Private signing keys: signed through their working copy, on the async path and on signing threads.
  const bool2 = (x: pkcs11js.Attribute) => (x.value as Buffer)[0] === 1;
  const signing: WorkingCopyReport['signing'] = {
    async: {},
    threads: {},
    loop: { keys: {}, rsaOnLoop: true, budget: { started: 0, doneWhenTimerRan: 0, onLoop: 0, verify: 0 }, stillOnLoop: false },
    afterDestroy: -1,
  };
  const made: Buffer[] = [];
  for (const [threads, into] of [
    [0, signing.async],
    [1, signing.threads],
  ] as const) {
    const st = new RegionToken({ ...settings, workingCopies: 4, signerThreads: threads });
    st.connect();
    for (const [name, spec, mech] of [
      ['ed25519', { kind: 'ed25519' } as const, { mechanism: 0x1057 }],
      ['ecdsa-p256', { kind: 'ec', curve: 'P-256' } as const, { mechanism: pkcs11js.CKM_ECDSA }],
    ] as const) {
      const id = Buffer.from(`probe/s${threads}${name}/${randomBytes(4).toString('hex')}`);
      made.push(id);
      await st.generate(spec, { ckaId: id, label: 'probe', extractable: false });
      const data = randomBytes(32);
      const sig = await st.sign(id, mech, data);
      await st.sign(id, mech, data); // the second signature reuses the copy
      const copies = find(id, false, pkcs11js.CKO_PRIVATE_KEY);
      const verifies = await st.verify(id, mech, data, sig);
      if (threads === 0) {
        const [tok, sens, ext] = p.C_GetAttributeValue(s, copies[0]!, [{ type: pkcs11js.CKA_TOKEN }, { type: pkcs11js.CKA_SENSITIVE }, { type: pkcs11js.CKA_EXTRACTABLE }]);
        (into as WorkingCopyReport['signing']['async'])[name] = {
          sessionCopies: copies.length,
          attrs: { token: bool2(tok!), sensitive: bool2(sens!), extractable: bool2(ext!) },
          verifies,
        };
      } else (into as WorkingCopyReport['signing']['threads'])[name] = { sessionCopies: copies.length, verifies };
    }
    for (const id of made.splice(0)) await st.destroy(id);
    signing.afterDestroy = Math.max(signing.afterDestroy, find(undefined, false, pkcs11js.CKO_PRIVATE_KEY).length);
    await st.shutdown();
  }
  {
    // A process per core: EdDSA/ECDSA sign on the event loop, one signing thread for the rest.
    const st = new RegionToken({ ...settings, workingCopies: 4, signerThreads: 1, signOnLoop: true });
    st.connect();
    const keyOf = async (name: string, spec: Parameters<RegionToken['generate']>[0]) => {
      const id = Buffer.from(`probe/l${name}/${randomBytes(4).toString('hex')}`);
      made.push(id);
      await st.generate(spec, { ckaId: id, label: 'probe', extractable: false });
      return id;
    };
    for (const [name, spec, mech] of [
      ['ed25519', { kind: 'ed25519' } as const, { mechanism: 0x1057 }],
      ['ecdsa-p256', { kind: 'ec', curve: 'P-256' } as const, { mechanism: pkcs11js.CKM_ECDSA }],
    ] as const) {
      const id = await keyOf(name, spec);
      const data = randomBytes(32);
      const before = st.loopSignatures;
      const sig = await st.sign(id, mech, data);
      await st.sign(id, mech, data); // the second signature reuses the copy
      signing.loop.keys[name] = {
        sessionCopies: find(id, false, pkcs11js.CKO_PRIVATE_KEY).length,
        verifies: await st.verify(id, mech, data, sig),
        onLoop: st.loopSignatures - before === 2,
      };
    }
    const rsa = await keyOf('rsa', { kind: 'rsa', bits: 2048 });
    const beforeRsa = st.loopSignatures;
    await st.sign(rsa, { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS }, randomBytes(32));
    signing.loop.rsaOnLoop = st.loopSignatures !== beforeRsa;
    // Many signatures requested in one turn: the loop signs its budget, then lets the timer run.
    const ed = made[0]!;
    const edMech = { mechanism: 0x1057 };
    const data = randomBytes(32);
    const beforeBatch = st.loopSignatures;
    let done = 0;
    const batch = Array.from({ length: 400 }, () => st.sign(ed, edMech, data).then((s) => (done++, s)));
    // the timer is set once the first signature is done: it runs a run or two later, long before the 400th
    const doneWhenTimerRan = await batch[0]!.then(() => new Promise<number>((r) => setTimeout(() => r(done), 0)));
    const sigs = await Promise.all(batch);
    let verify = 0;
    for (const s of sigs) if (await st.verify(ed, edMech, data, s)) verify++;
    signing.loop.budget = { started: batch.length, doneWhenTimerRan, onLoop: st.loopSignatures - beforeBatch, verify };
    signing.loop.stillOnLoop = st.signingOnLoop;
    for (const id of made.splice(0)) await st.destroy(id);
    signing.afterDestroy = Math.max(signing.afterDestroy, find(undefined, false, pkcs11js.CKO_PRIVATE_KEY).length);
    await st.shutdown();
  }
  report.signing = signing;

  const plain = new RegionToken({ ...settings, workingCopies: 0 });
  plain.connect();
  const d = Buffer.from(`probe/d/${randomBytes(4).toString('hex')}`);
  await plain.generate({ kind: 'aes', bytes: 32 }, { ckaId: d, label: 'probe', extractable: false });
  plain.aesGcmEncrypt(d, iv, aad, plaintext);
  report.disabled = { copies: plain.workingCopies, sessionObjects: find(undefined, false).length };
  await plain.destroy(d);
  plain.close();
  return report as WorkingCopyReport;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  // the signing threads are unref'd (a daemon's server keeps it alive): so does this timer here
  const alive = setInterval(() => {}, 1000);
  main(process.argv[2]!, process.argv[3]!).then(
    (r) => {
      clearInterval(alive);
      process.stdout.write(JSON.stringify(r));
    },
    (e) => {
      process.stderr.write(String((e as Error)?.stack ?? e));
      process.exit(1);
    },
  );
}
