import pkcs11js from 'pkcs11js';
import { CKM_CHACHA20_POLY1305, CKM_EDDSA, HASH_MECH, type HashName } from './constants.js';
import { TokenError, toTokenError } from './errors.js';
import { Pkcs11Library } from './module.js';
import { TokenSessionPool } from './session-pool.js';
import { input } from './input.js';
import { SignerThreads } from './signer-threads.js';
import { keyPairTemplate, secretKeyTemplate, type ObjectOptions, type TokenKeySpec } from './templates.js';

const { CKA_CLASS, CKA_ID, CKO_SECRET_KEY, CKO_PRIVATE_KEY, CKO_PUBLIC_KEY } = pkcs11js;
const SESSION_FLAGS = pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION;

export type ObjectClass = 'secret' | 'private' | 'public';
const CLASS_VALUE: Record<ObjectClass, number> = { secret: CKO_SECRET_KEY, private: CKO_PRIVATE_KEY, public: CKO_PUBLIC_KEY };

export interface TokenSettings {
  region: string;
  modulePath: string;
  label: string;
  pin: string;
  sessions: number;
  /** At most this many session working copies of secret keys (0: operate on token objects). */
  workingCopies?: number;
  /** Worker threads that run asymmetric signing (0: pkcs11js C_SignAsync from the main thread). */
  signerThreads?: number;
}

export interface TokenOpTimer {
  (op: string, seconds: number): void;
}

/** Public half of an asymmetric key, read from the token (never secret). */
export type PublicKeyAttrs =
  | { kind: 'rsa'; modulus: Buffer; publicExponent: Buffer }
  | { kind: 'ec'; ecParams: Buffer; ecPoint: Buffer };

/**
 * One region's PKCS#11 token: login, a session pool, a CKA_ID → handle cache, and the
 * operations kmsd needs. Fast symmetric operations (AES-GCM, HMAC: ~19 µs on SoftHSM2) run
 * synchronously on a dedicated session, because the libuv hop costs more than the operation
 * (~43 µs measured); everything slow (key generation, RSA, EC, EdDSA, unwrap) runs through the
 * pkcs11js *Async calls so the event loop never waits on the HSM.
 *
 * Symmetric operations use a session *working copy* of the token object (C_CopyObject with
 * CKA_TOKEN false, made on first use, held by a session that does nothing else). The copy lives
 * in the token like the original, keeps CKA_SENSITIVE and CKA_EXTRACTABLE false, and dies with
 * the session. Why: SoftHSM2's file store re-validates a token object against its file on every
 * C_EncryptInit, so one AES-GCM operation costs ~45 µs on a token object and ~18 µs on a
 * session object (measured, pkcs11js 2.1.7, SoftHSM2 2.6.1). Copies are dropped when a version
 * is destroyed (here, or by another process via the key change feed) and when over the cap.
 */
export class RegionToken {
  private lib?: Pkcs11Library;
  private slot?: pkcs11js.Handle;
  private pool?: TokenSessionPool;
  private allSessions: pkcs11js.Handle[] = [];
  private syncSession?: pkcs11js.Handle;
  private readonly handles = new Map<string, pkcs11js.Handle>();
  /**
   * Secret-key handles for symmetric operations by cache key, oldest first: a working copy
   * (`copied`, a session object this class destroys) or, for a key the token would not copy,
   * the token object itself (never destroyed here).
   */
  private readonly working = new Map<string, { handle: pkcs11js.Handle; copied: boolean }>();
  /** The session that owns the working copies; never used for operations, so never renewed. */
  private holderSession?: pkcs11js.Handle;
  private down: string | undefined = 'not connected yet';
  mechanisms = new Set<number>();
  /** CKA_ID cache key → `connections` when it was first missed. */
  private readonly missing = new Map<string, number>();
  /** Successful connects (each object-index re-read is one). */
  private connections = 0;
  /**
   * Set by the registry: called when an object that should exist is not visible; returns the
   * re-read of the object index that will show it (scheduled or running).
   */
  onMissingObject?: () => Promise<void>;
  /** The pending re-read of this token's object index (set by the registry), if any. */
  rereading?: Promise<void>;
  /** Objects the start-up scan could not read (reported by readiness details and logs). */
  unreadable = 0;
  manufacturer = '';
  model = '';
  serial = '';

  private readonly signer?: SignerThreads;

  constructor(
    readonly settings: TokenSettings,
    private readonly timer: TokenOpTimer = () => {},
  ) {
    if ((settings.signerThreads ?? 0) > 0) this.signer = new SignerThreads(settings.modulePath, settings.signerThreads!);
  }

  get available(): boolean {
    return this.down === undefined;
  }
  get unavailableReason(): string | undefined {
    return this.down;
  }

  /** Opens sessions, logs in and indexes every token object by CKA_ID (the only full scan). */
  connect(): void {
    this.closeSessions();
    const s = this.settings;
    try {
      this.lib = Pkcs11Library.open(s.modulePath);
      const p11 = this.lib.p11;
      const slot = this.lib.findSlot(s.label);
      if (!slot) throw new TokenError('unavailable', 0xe0, `no token labelled ${s.label} in ${s.modulePath}`);
      this.slot = slot;
      const info = p11.C_GetTokenInfo(slot);
      this.manufacturer = info.manufacturerID.trim();
      this.model = info.model.trim();
      this.serial = info.serialNumber.trim();
      this.mechanisms = new Set(p11.C_GetMechanismList(slot));
      const sessions: pkcs11js.Handle[] = [];
      for (let i = 0; i < s.sessions + 2; i++) sessions.push(p11.C_OpenSession(slot, SESSION_FLAGS));
      this.allSessions = sessions;
      try {
        p11.C_Login(sessions[0]!, pkcs11js.CKU_USER, s.pin);
      } catch (e) {
        // 0x100 = CKR_USER_ALREADY_LOGGED_IN: login is per application, another region did it.
        if (!(e instanceof pkcs11js.Pkcs11Error && e.code === 0x100)) throw e;
      }
      this.syncSession = sessions[0];
      this.holderSession = sessions[1];
      this.pool = new TokenSessionPool(sessions.slice(2));
      this.scanObjects();
      this.connections++;
      this.down = undefined;
    } catch (e) {
      this.closeSessions();
      const err = toTokenError(e, `region ${s.region}`);
      this.down = err.message;
      throw err;
    }
  }

  private closeSessions(): void {
    if (this.lib)
      for (const sh of this.allSessions) {
        try {
          this.lib.p11.C_CloseSession(sh);
        } catch {
          /* already closed */
        }
      }
    this.allSessions = [];
    this.pool = undefined;
    this.syncSession = undefined;
    this.holderSession = undefined;
    this.handles.clear();
    this.working.clear(); // closing the holder session destroyed the copies
  }

  close(): void {
    this.closeSessions();
    this.down = 'closed';
  }

  /** Final shutdown: also stops the signing threads. */
  async shutdown(): Promise<void> {
    this.close();
    await this.signer?.close();
  }

  /** An operation is in flight off the main thread (the library must not be re-initialised now). */
  get busy(): boolean {
    return (this.pool?.busy ?? 0) > 0 || (this.signer?.inFlight ?? 0) > 0;
  }

  /**
   * Takes the region out of service (503 for new requests) and waits until no async operation
   * is in flight, so the library can be re-initialised under it. Sync operations cannot be in
   * flight while this (JS-thread) code runs.
   */
  async drain(reason: string, timeoutMs = 5000): Promise<void> {
    this.down = reason;
    const until = Date.now() + timeoutMs;
    while (this.busy && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
  }

  /** Marks the region down after a device-class failure; the daemon's retry loop reconnects. */
  private fail(e: unknown, what: string): never {
    const err = toTokenError(e, what);
    if (err.kind === 'unavailable') {
      this.down = err.message;
      this.handles.clear();
      this.working.clear();
    }
    throw err;
  }

  /**
   * Replaces a session whose operation a failed call left active (SoftHSM2 does so on
   * CKR_ARGUMENTS_BAD; later calls then get CKR_OPERATION_ACTIVE). Only for those two codes:
   * closing a session also destroys the session objects it created (probe pairs, BYOK
   * ephemeral keys), so a session is never recycled for ordinary failures.
   */
  private renewSession = (old: pkcs11js.Handle, error: unknown): pkcs11js.Handle => {
    const ckr = toTokenError(error, 'renew').ckr;
    if (ckr !== 0x7 && ckr !== 0x90) return old;
    const p11 = this.lib!.p11;
    try {
      p11.C_CloseSession(old);
    } catch {
      /* already gone */
    }
    try {
      const fresh = p11.C_OpenSession(this.slot!, SESSION_FLAGS);
      this.allSessions = this.allSessions.map((h) => (h.equals(old) ? fresh : h));
      return fresh;
    } catch {
      return old; // the token itself is failing; the unavailable path takes over
    }
  };

  private get p11(): pkcs11js.PKCS11 {
    if (this.down !== undefined || !this.lib) throw new TokenError('unavailable', 0xe0, this.down ?? 'not connected', this.rereading);
    return this.lib.p11;
  }

  private scanObjects(): void {
    const p11 = this.lib!.p11;
    const s = this.syncSession!;
    p11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_TOKEN, value: true }]);
    const found: pkcs11js.Handle[] = [];
    for (;;) {
      const batch = p11.C_FindObjects(s, 1000);
      if (!batch.length) break;
      found.push(...batch);
    }
    p11.C_FindObjectsFinal(s);
    this.unreadable = 0;
    for (const h of found) {
      let attrs;
      try {
        attrs = p11.C_GetAttributeValue(s, h, [{ type: CKA_CLASS }, { type: CKA_ID }]);
      } catch {
        // An object the token cannot read back (seen after a kill -9 mid-write): skip, count, go on.
        this.unreadable++;
        continue;
      }
      const [cls, id] = attrs;
      if (!id?.value || !(id.value as Buffer).length) continue;
      const c = (cls!.value as Buffer).readUInt32LE(0);
      this.handles.set(cacheKey(c, id.value as Buffer), h);
    }
  }

  /** Every CKA_ID on the token that starts with `prefix` (used by reconciliation). */
  listObjectIds(prefix: Buffer): Buffer[] {
    const ids = new Map<string, Buffer>();
    for (const k of this.handles.keys()) {
      const id = Buffer.from(k.slice(k.indexOf(':') + 1), 'hex');
      if (id.subarray(0, prefix.length).equals(prefix)) ids.set(id.toString('hex'), id);
    }
    return [...ids.values()];
  }

  get objectCount(): number {
    return this.handles.size;
  }

  /** Handle of the object with this CKA_ID and class: cache first, one C_FindObjects on a miss. */
  handle(ckaId: Buffer, cls: ObjectClass): pkcs11js.Handle {
    const key = cacheKey(CLASS_VALUE[cls], ckaId);
    const cached = this.handles.get(key);
    if (cached) return cached;
    const found = this.find(ckaId, cls);
    if (!found) {
      // Callers only look up objects SQLite says exist. SoftHSM2 2.6.1 can miss an object another
      // process created at the same moment as one of its own writes (both bump the generation
      // counter; this process never sees the counter move, so it never re-reads the token
      // directory). Only re-initialising the library re-reads it: ask the registry to do so.
      // Until one re-read has happened since the first miss; an object still missing after that
      // is really gone and must not make every later request re-initialise the library.
      // The caller waits for that re-read (TokenError.rereading) and tries again.
      const reread = this.rereadFor(key);
      throw new TokenError('staleHandle', 0x82, `no ${cls} object with CKA_ID ${ckaId.toString()} visible on the token`, reread);
    }
    this.handles.set(key, found);
    return found;
  }

  /**
   * The re-read to wait for after a miss of `key`, or undefined when one already ran since the
   * first miss (then the object is really gone).
   */
  private rereadFor(key: string): Promise<void> | undefined {
    const firstMissAt = this.missing.get(key);
    if (firstMissAt !== undefined && firstMissAt !== this.connections) return undefined;
    if (firstMissAt === undefined) {
      if (this.missing.size > 10_000) this.missing.clear();
      this.missing.set(key, this.connections);
    }
    return this.onMissingObject?.();
  }

  private find(ckaId: Buffer, cls: ObjectClass): pkcs11js.Handle | undefined {
    const p11 = this.p11;
    // Token objects only: a working copy carries the same CKA_ID and class.
    const template = [
      { type: CKA_CLASS, value: CLASS_VALUE[cls] },
      { type: CKA_ID, value: ckaId },
      { type: pkcs11js.CKA_TOKEN, value: true },
    ];
    try {
      try {
        p11.C_FindObjectsInit(this.syncSession!, template);
      } catch (e) {
        // A find left open by an earlier failure must not wedge every later lookup.
        this.syncSession = this.renewSession(this.syncSession!, e);
        p11.C_FindObjectsInit(this.syncSession, template);
      }
      const s = this.syncSession!;
      try {
        return p11.C_FindObjects(s, 1)[0];
      } finally {
        try {
          p11.C_FindObjectsFinal(s);
        } catch {
          /* nothing to finish */
        }
      }
    } catch (e) {
      return this.fail(e, 'C_FindObjects');
    }
  }

  /** Drops cached handles of this CKA_ID and destroys its working copy, if any. */
  forget(ckaId: Buffer): void {
    for (const cls of Object.values(CLASS_VALUE)) this.handles.delete(cacheKey(cls, ckaId));
    this.dropWorkingCopy(cacheKey(CKO_SECRET_KEY, ckaId));
  }

  /** Number of live working copies (metrics and tests). */
  get workingCopies(): number {
    let n = 0;
    for (const e of this.working.values()) if (e.copied) n++;
    return n;
  }

  /**
   * The handle symmetric operations use: the key's working copy, made on first use. A token
   * that refuses the copy (CKA_COPYABLE false, no C_CopyObject) is operated on directly.
   */
  private secretHandle(ckaId: Buffer): pkcs11js.Handle {
    const key = cacheKey(CKO_SECRET_KEY, ckaId);
    const known = this.working.get(key);
    if (known) return known.handle;
    const original = this.handle(ckaId, 'secret');
    const cap = this.settings.workingCopies ?? 0;
    if (cap <= 0) return original;
    let entry: { handle: pkcs11js.Handle; copied: boolean };
    try {
      entry = { handle: this.p11.C_CopyObject(this.holderSession!, original, [{ type: pkcs11js.CKA_TOKEN, value: false }]), copied: true };
    } catch (e) {
      const err = toTokenError(e, 'C_CopyObject');
      if (err.kind === 'staleHandle' || err.kind === 'unavailable') throw err;
      entry = { handle: original, copied: false }; // not copyable: remembered, so the copy is not retried per request
    }
    if (this.working.size >= cap) this.dropWorkingCopy(this.working.keys().next().value!);
    this.working.set(key, entry);
    return entry.handle;
  }

  private dropWorkingCopy(key: string): void {
    const entry = this.working.get(key);
    if (entry === undefined) return;
    this.working.delete(key);
    if (!entry.copied || !this.lib || this.down !== undefined) return; // a token object is never destroyed here
    try {
      this.lib.p11.C_DestroyObject(this.holderSession!, entry.handle);
    } catch {
      /* already gone with its session */
    }
  }

  /**
   * Runs a synchronous operation on a cached handle; if the handle went stale (object
   * destroyed and re-created by another process) it re-resolves once.
   */
  private withHandle<T>(ckaId: Buffer, cls: ObjectClass, what: string, fn: (h: pkcs11js.Handle) => T): T {
    return this.onHandle(ckaId, what, () => this.handle(ckaId, cls), fn);
  }

  /** The same on a secret key's working copy: the symmetric operations. */
  private withWorkingCopy<T>(ckaId: Buffer, what: string, fn: (h: pkcs11js.Handle) => T): T {
    return this.onHandle(ckaId, what, () => this.secretHandle(ckaId), fn);
  }

  private onHandle<T>(ckaId: Buffer, what: string, resolve: () => pkcs11js.Handle, fn: (h: pkcs11js.Handle) => T): T {
    try {
      return fn(resolve());
    } catch (e) {
      const err = toTokenError(e, what);
      if (this.syncSession) this.syncSession = this.renewSession(this.syncSession, err);
      if (err.kind !== 'staleHandle' || err.rereading) return this.fail(err, what);
      this.forget(ckaId);
      try {
        return fn(resolve());
      } catch (e2) {
        return this.fail(e2, what);
      }
    }
  }

  private async withSessionAndHandle<T>(
    ckaId: Buffer,
    cls: ObjectClass,
    what: string,
    fn: (p11: pkcs11js.PKCS11, s: pkcs11js.Handle, h: pkcs11js.Handle) => Promise<T>,
  ): Promise<T> {
    const p11 = this.p11;
    const started = performance.now();
    try {
      return await this.pool!.use(async (s) => {
        try {
          return await fn(p11, s, this.handle(ckaId, cls));
        } catch (e) {
          const err = toTokenError(e, what);
          if (err.kind !== 'staleHandle' || err.rereading) throw err;
          this.forget(ckaId);
          return await fn(p11, s, this.handle(ckaId, cls));
        }
      }, this.renewSession);
    } catch (e) {
      return this.fail(e, what);
    } finally {
      this.timer(what, (performance.now() - started) / 1000);
    }
  }

  private async withSession<T>(what: string, fn: (p11: pkcs11js.PKCS11, s: pkcs11js.Handle) => Promise<T>): Promise<T> {
    const p11 = this.p11;
    const started = performance.now();
    try {
      return await this.pool!.use((s) => fn(p11, s));
    } catch (e) {
      return this.fail(e, what);
    } finally {
      this.timer(what, (performance.now() - started) / 1000);
    }
  }

  // ---- key generation -------------------------------------------------------------------

  async generate(spec: TokenKeySpec, o: ObjectOptions): Promise<void> {
    if (spec.kind === 'aes' || spec.kind === 'hmac' || spec.kind === 'chacha20') {
      const { mechanism, template } = secretKeyTemplate(spec, o);
      const h = await this.retryTransient(o, () => this.withSession('generate', (p11, s) => p11.C_GenerateKeyAsync(s, { mechanism }, template)));
      if (o.token !== false) this.handles.set(cacheKey(CKO_SECRET_KEY, o.ckaId), h);
      return;
    }
    const t = keyPairTemplate(spec, o);
    const pair = await this.retryTransient(o, () =>
      this.withSession('generate', (p11, s) => p11.C_GenerateKeyPairAsync(s, { mechanism: t.mechanism }, t.publicTemplate, t.privateTemplate)),
    );
    if (o.token !== false) {
      this.handles.set(cacheKey(CKO_PRIVATE_KEY, o.ckaId), pair.privateKey);
      this.handles.set(cacheKey(CKO_PUBLIC_KEY, o.ckaId), pair.publicKey);
    }
  }

  /**
   * SoftHSM2's file store occasionally fails a token-object write with CKR_GENERAL_ERROR when
   * another process writes the same token at that instant (seen in tests with two daemons
   * creating keys together). Creating a new object is safe to retry: anything the failed
   * attempt left under this CKA_ID is removed first.
   */
  private async retryTransient<T>(o: ObjectOptions, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        if (!(e instanceof TokenError) || (e.ckr !== 0x5 && e.ckr !== 0x6) || attempt >= 4) throw e;
        if (o.token !== false) await this.destroy(o.ckaId).catch(() => 0);
        await new Promise((r) => setTimeout(r, 10 + Math.random() * 40 * attempt));
      }
    }
  }

  /** Generates an RSA pair from explicit templates (wrapping keys); returns the handles. */
  async generateKeyPairRaw(mechanism: number, pub: pkcs11js.Template, priv: pkcs11js.Template, ckaId?: Buffer) {
    const pair = await this.withSession('generate', (p11, s) => p11.C_GenerateKeyPairAsync(s, { mechanism }, pub, priv));
    if (ckaId) {
      this.handles.set(cacheKey(CKO_PRIVATE_KEY, ckaId), pair.privateKey);
      this.handles.set(cacheKey(CKO_PUBLIC_KEY, ckaId), pair.publicKey);
    }
    return pair;
  }

  /** Destroys every object (secret, private, public) with this CKA_ID. Idempotent. */
  async destroy(ckaId: Buffer): Promise<number> {
    let n = 0;
    this.forget(ckaId);
    for (const cls of Object.keys(CLASS_VALUE) as ObjectClass[]) {
      for (;;) {
        const h = this.find(ckaId, cls);
        if (!h) break;
        try {
          this.p11.C_DestroyObject(this.syncSession!, h);
          n++;
        } catch (e) {
          const err = toTokenError(e, 'C_DestroyObject');
          if (err.kind !== 'staleHandle') this.fail(err, 'C_DestroyObject');
        }
      }
    }
    return n;
  }

  destroyHandle(h: pkcs11js.Handle): void {
    try {
      this.p11.C_DestroyObject(this.syncSession!, h);
    } catch (e) {
      const err = toTokenError(e, 'C_DestroyObject');
      if (err.kind !== 'staleHandle') this.fail(err, 'C_DestroyObject');
    }
  }

  /**
   * Whether the object is on the token, asked of the token itself. A miss that no object-index
   * re-read has followed yet throws a TokenError with `rereading` (wait for it, ask again):
   * SoftHSM2 may hide an object another process just created.
   */
  exists(ckaId: Buffer, cls: ObjectClass): boolean {
    const key = cacheKey(CLASS_VALUE[cls], ckaId);
    this.handles.delete(key);
    const found = this.find(ckaId, cls);
    if (found) {
      this.handles.set(key, found);
      return true;
    }
    const reread = this.rereadFor(key);
    if (reread) throw new TokenError('staleHandle', 0x82, `no ${cls} object with CKA_ID ${ckaId.toString()} visible on the token yet`, reread);
    return false;
  }

  // ---- symmetric (synchronous: cheaper than the thread-pool hop) --------------------------

  aesGcmEncrypt(ckaId: Buffer, iv: Buffer, aad: Buffer, plaintext: Buffer): Buffer {
    const started = performance.now();
    const out = this.withWorkingCopy(ckaId, 'encrypt', (h) => {
      const p11 = this.p11;
      const s = this.syncSession!;
      p11.C_EncryptInit(s, gcm(iv, aad), h);
      return p11.C_Encrypt(s, input(plaintext), Buffer.allocUnsafe(plaintext.length + 16));
    });
    this.timer('encrypt', (performance.now() - started) / 1000);
    return out;
  }

  /** Several AES-GCM encryptions under one key: one handle lookup and one timing for all. */
  aesGcmEncryptMany(ckaId: Buffer, items: { iv: Buffer; aad: Buffer; plaintext: Buffer }[]): Buffer[] {
    const started = performance.now();
    const out = this.withWorkingCopy(ckaId, 'encrypt', (h) => {
      const p11 = this.p11;
      const s = this.syncSession!;
      return items.map((i) => {
        p11.C_EncryptInit(s, gcm(i.iv, i.aad), h);
        return p11.C_Encrypt(s, input(i.plaintext), Buffer.allocUnsafe(i.plaintext.length + 16));
      });
    });
    this.timer('encrypt-batch', (performance.now() - started) / 1000);
    return out;
  }

  /** Returns undefined when the tag does not verify (wrong key, AAD, or tampering). */
  aesGcmDecrypt(ckaId: Buffer, iv: Buffer, aad: Buffer, ctAndTag: Buffer): Buffer | undefined {
    const started = performance.now();
    try {
      return this.withWorkingCopy(ckaId, 'decrypt', (h) => {
        const p11 = this.p11;
        const s = this.syncSession!;
        p11.C_DecryptInit(s, gcm(iv, aad), h);
        return p11.C_Decrypt(s, input(ctAndTag), Buffer.allocUnsafe(ctAndTag.length));
      });
    } catch (e) {
      // SoftHSM2 reports a GCM tag mismatch as CKR_GENERAL_ERROR (0x5), measured.
      if (e instanceof TokenError && (e.kind === 'badCiphertext' || e.ckr === 0x5)) return undefined;
      throw e;
    } finally {
      this.timer('decrypt', (performance.now() - started) / 1000);
    }
  }

  hmac(ckaId: Buffer, mechanism: number, data: Buffer): Buffer {
    const started = performance.now();
    const out = this.withWorkingCopy(ckaId, 'hmac', (h) => {
      const p11 = this.p11;
      const s = this.syncSession!;
      p11.C_SignInit(s, { mechanism }, h);
      return p11.C_Sign(s, input(data), Buffer.allocUnsafe(64));
    });
    this.timer('hmac', (performance.now() - started) / 1000);
    return out;
  }

  /** Random bytes from the token's RNG (data keys). */
  random(bytes: number): Buffer {
    try {
      return this.p11.C_GenerateRandom(this.syncSession!, Buffer.alloc(bytes));
    } catch (e) {
      return this.fail(e, 'C_GenerateRandom');
    }
  }

  // ---- asymmetric (async) -----------------------------------------------------------------

  sign(ckaId: Buffer, mechanism: pkcs11js.Mechanism, data: Buffer): Promise<Buffer> {
    if (this.signer?.usable) return this.signOnThreads(ckaId, mechanism, data);
    return this.withSessionAndHandle(ckaId, 'private', 'sign', (p11, s, h) => {
      p11.C_SignInit(s, mechanism, h);
      return p11.C_SignAsync(s, input(data), Buffer.allocUnsafe(1024));
    });
  }

  private async signOnThreads(ckaId: Buffer, mechanism: pkcs11js.Mechanism, data: Buffer): Promise<Buffer> {
    void this.p11; // throws 503 while the region is down
    const started = performance.now();
    const attempt = () => this.signer!.sign(this.connections, this.slot!, this.handle(ckaId, 'private'), mechanism, data);
    try {
      try {
        return await attempt();
      } catch (e) {
        if (!this.signer!.usable) return await this.sign(ckaId, mechanism, data); // a thread died: the async path
        const err = toTokenError(e, 'sign');
        if (err.kind !== 'staleHandle' || err.rereading) throw err;
        this.forget(ckaId);
        return await attempt();
      }
    } catch (e) {
      return this.fail(e, 'sign');
    } finally {
      this.timer('sign', (performance.now() - started) / 1000);
    }
  }

  async verify(ckaId: Buffer, mechanism: pkcs11js.Mechanism, data: Buffer, signature: Buffer): Promise<boolean> {
    try {
      return await this.withSessionAndHandle(ckaId, 'public', 'verify', (p11, s, h) => {
        p11.C_VerifyInit(s, mechanism, h);
        return p11.C_VerifyAsync(s, input(data), input(signature));
      });
    } catch (e) {
      if (e instanceof TokenError && e.kind === 'badSignature') return false;
      throw e;
    }
  }

  /** RSA-OAEP decryption inside the token; undefined when the padding does not check out. */
  async rsaOaepDecrypt(ckaId: Buffer, hash: HashName, ciphertext: Buffer): Promise<Buffer | undefined> {
    try {
      return await this.withSessionAndHandle(ckaId, 'private', 'decrypt-asymmetric', (p11, s, h) => {
        p11.C_DecryptInit(s, oaep(hash), h);
        return p11.C_DecryptAsync(s, input(ciphertext), Buffer.allocUnsafe(1024));
      });
    } catch (e) {
      // SoftHSM2 reports every OAEP decoding failure as CKR_GENERAL_ERROR (0x5), measured.
      if (e instanceof TokenError && (e.kind === 'badCiphertext' || e.kind === 'badWrappedKey' || e.ckr === 0x5)) return undefined;
      throw e;
    }
  }

  readPublicKey(ckaId: Buffer): PublicKeyAttrs {
    return this.withHandle(ckaId, 'public', 'read public key', (h) => this.readPublicKeyByHandle(h));
  }

  readPublicKeyByHandle(h: pkcs11js.Handle): PublicKeyAttrs {
    {
      const p11 = this.p11;
      const [kt] = p11.C_GetAttributeValue(this.syncSession!, h, [{ type: pkcs11js.CKA_KEY_TYPE }]);
      const keyType = (kt!.value as Buffer).readUInt32LE(0);
      if (keyType === pkcs11js.CKK_RSA) {
        const [m, e] = p11.C_GetAttributeValue(this.syncSession!, h, [
          { type: pkcs11js.CKA_MODULUS },
          { type: pkcs11js.CKA_PUBLIC_EXPONENT },
        ]);
        return { kind: 'rsa', modulus: m!.value as Buffer, publicExponent: e!.value as Buffer };
      }
      const [p, q] = p11.C_GetAttributeValue(this.syncSession!, h, [
        { type: pkcs11js.CKA_EC_PARAMS },
        { type: pkcs11js.CKA_EC_POINT },
      ]);
      return { kind: 'ec', ecParams: p!.value as Buffer, ecPoint: q!.value as Buffer };
    }
  }

  // ---- wrapping (BYOK and export) -----------------------------------------------------------

  /** C_UnwrapKey into a new object; `unwrapping` is a handle (session objects) or a CKA_ID. */
  unwrap(
    unwrapping: { handle: pkcs11js.Handle } | { ckaId: Buffer; cls: ObjectClass },
    mechanism: pkcs11js.Mechanism,
    wrapped: Buffer,
    template: pkcs11js.Template,
  ): Promise<pkcs11js.Handle> {
    if ('handle' in unwrapping)
      return this.withSession('unwrap', (p11, s) => p11.C_UnwrapKeyAsync(s, mechanism, unwrapping.handle, wrapped, template));
    return this.withSessionAndHandle(unwrapping.ckaId, unwrapping.cls, 'unwrap', (p11, s, h) =>
      p11.C_UnwrapKeyAsync(s, mechanism, h, wrapped, template),
    );
  }

  wrap(mechanism: pkcs11js.Mechanism, wrappingKey: pkcs11js.Handle, key: pkcs11js.Handle): Promise<Buffer> {
    return this.withSession('wrap', (p11, s) => p11.C_WrapKeyAsync(s, mechanism, wrappingKey, key, Buffer.allocUnsafe(16384)));
  }

  /** Creates an object from attributes (public keys of callers, for wrapping on export). */
  createObject(template: pkcs11js.Template): pkcs11js.Handle {
    try {
      return this.p11.C_CreateObject(this.syncSession!, template);
    } catch (e) {
      return this.fail(e, 'C_CreateObject');
    }
  }

  /** C_GenerateKey from an explicit template (BYOK/export: ephemeral session keys with CKA_WRAP). */
  generateKeyRaw(mechanism: number, template: pkcs11js.Template): Promise<pkcs11js.Handle> {
    return this.withSession('generate', (p11, s) => p11.C_GenerateKeyAsync(s, { mechanism }, template));
  }

  /** C_DeriveKey from a base object handle (BYOK: ECDH with the curve generator yields an imported key's public point). */
  deriveKey(mechanism: pkcs11js.Mechanism, base: pkcs11js.Handle, template: pkcs11js.Template): Promise<pkcs11js.Handle> {
    return this.withSession('derive', (p11, s) => p11.C_DeriveKeyAsync(s, mechanism, base, template));
  }

  /** Reads attributes of an object by handle (session objects have no cached CKA_ID). */
  readAttributesByHandle(h: pkcs11js.Handle, types: number[]): Map<number, Buffer> {
    try {
      const attrs = this.p11.C_GetAttributeValue(
        this.syncSession!,
        h,
        types.map((type) => ({ type })),
      );
      return new Map(attrs.map((a) => [a.type, a.value as Buffer]));
    } catch (e) {
      return this.fail(e, 'C_GetAttributeValue');
    }
  }

  cacheHandle(ckaId: Buffer, cls: ObjectClass, h: pkcs11js.Handle): void {
    this.handles.set(cacheKey(CLASS_VALUE[cls], ckaId), h);
  }

  // ---- capabilities ---------------------------------------------------------------------------

  has(mechanism: number): boolean {
    return this.mechanisms.has(mechanism);
  }
  get hasChaCha20(): boolean {
    return this.mechanisms.has(CKM_CHACHA20_POLY1305);
  }
  get hasEdDsa(): boolean {
    return this.mechanisms.has(CKM_EDDSA);
  }
}


function cacheKey(cls: number, ckaId: Buffer): string {
  return `${cls}:${ckaId.toString('hex')}`;
}

function gcm(iv: Buffer, aad: Buffer): pkcs11js.Mechanism {
  return {
    mechanism: pkcs11js.CKM_AES_GCM,
    parameter: { type: pkcs11js.CK_PARAMS_AES_GCM, iv, aad, ivBits: 96, tagBits: 128 } as pkcs11js.AesGCM,
  };
}

export function oaep(hash: HashName): pkcs11js.Mechanism {
  const h = HASH_MECH[hash];
  return {
    mechanism: pkcs11js.CKM_RSA_PKCS_OAEP,
    parameter: { type: pkcs11js.CK_PARAMS_RSA_OAEP, hashAlg: h.hashAlg, mgf: h.mgf, source: 1 /* CKZ_DATA_SPECIFIED */ } as pkcs11js.RsaOAEP,
  };
}
