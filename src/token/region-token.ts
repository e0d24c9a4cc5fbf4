import pkcs11js from 'pkcs11js';
import { CKM_CHACHA20_POLY1305, CKM_EDDSA, HASH_MECH, type HashName } from './constants.js';
import { TokenConnection, type TokenSettings } from './connection.js';
import { TokenError, toTokenError } from './errors.js';
import { input } from './input.js';
import { ObjectIndex, type ObjectClass } from './object-index.js';
import { SignerThreads } from './signer-threads.js';
import { TokenBurst } from './token-burst.js';
import { keyPairTemplate, mechanismsFor, secretKeyTemplate, type ObjectOptions, type TokenKeySpec } from './templates.js';
import { WorkingCopies } from './working-copies.js';

export type { TokenSettings } from './connection.js';
export type { ObjectClass } from './object-index.js';

export interface TokenOpTimer {
  (op: string, seconds: number): void;
}

/** Public half of an asymmetric key, read from the token (never secret). */
export type PublicKeyAttrs =
  | { kind: 'rsa'; modulus: Buffer; publicExponent: Buffer }
  | { kind: 'ec'; ecParams: Buffer; ecPoint: Buffer };

/**
 * One region's PKCS#11 token and the operations kmsd needs, over three parts: the connection
 * (library, login, sessions, up or down: connection.ts), the CKA_ID → handle index
 * (object-index.ts) and session working copies (working-copies.ts). Fast symmetric operations
 * (AES-GCM, HMAC: ~19 µs on SoftHSM2) run synchronously on a dedicated session, because the
 * libuv hop costs more than the operation (~43 µs measured); everything slow (key generation,
 * RSA, EC, EdDSA, unwrap) runs through the pkcs11js *Async calls or the signing threads so the
 * event loop never waits on the HSM long — except EdDSA/ECDSA signatures where every core runs
 * a kmsd process (`signOnLoop`, see sign). Operations use working copies of the keys.
 */
export class RegionToken {
  private readonly conn: TokenConnection;
  private readonly index: ObjectIndex;
  private readonly copies: WorkingCopies;
  /** Started on the first signature (see `startSigner`). */
  private signer?: SignerThreads;
  /** Signing on the event loop is on (settings.signOnLoop) and has not been found slow. */
  private loopSigning: boolean;
  /** The signatures of one turn, run back to back on the loop, at most LOOP_SIGN_BUDGET_MS a run. */
  private readonly loopSigns = new TokenBurst(LOOP_SIGN_BUDGET_MS);
  /** Signatures made on the event loop (tests and metrics of the split). */
  loopSignatures = 0;
  /** Consecutive event-loop signatures slower than LOOP_SIGN_SLOW_MS. */
  private slowLoopSigns = 0;

  constructor(
    readonly settings: TokenSettings,
    private readonly timer: TokenOpTimer = () => {},
  ) {
    this.conn = new TokenConnection(settings);
    this.index = new ObjectIndex(this.conn, (e, what) => this.fail(e, what));
    this.copies = new WorkingCopies(this.conn, this.index, settings.workingCopies ?? 0);
    this.loopSigning = settings.signOnLoop === true;
  }

  get available(): boolean {
    return this.conn.down === undefined;
  }
  get unavailableReason(): string | undefined {
    return this.conn.down;
  }
  get mechanisms(): Set<number> {
    return this.conn.mechanisms;
  }
  get manufacturer(): string {
    return this.conn.manufacturer;
  }
  get model(): string {
    return this.conn.model;
  }
  get serial(): string {
    return this.conn.serial;
  }
  /** Objects the start-up scan could not read (reported by readiness details and logs). */
  get unreadable(): number {
    return this.index.unreadable;
  }
  /** Set by the registry: called when an object that should exist is not visible (see ObjectIndex.handle). */
  set onMissingObject(f: (() => Promise<void>) | undefined) {
    this.index.onMissingObject = f;
  }
  /** The pending re-read of this token's object index (set by the registry), if any. */
  get rereading(): Promise<void> | undefined {
    return this.conn.rereading;
  }
  set rereading(p: Promise<void> | undefined) {
    this.conn.rereading = p;
  }

  /**
   * Opens sessions, logs in and indexes every token object by CKA_ID (the only full scan).
   * `background`: the region is usable as soon as the sessions are open, and the index is built
   * in slices meanwhile (start-up on a large token); lookups that miss wait for it (`indexed`).
   */
  connect(opts: { background?: boolean } = {}): void {
    this.closeSessions();
    try {
      this.conn.open();
      if (!opts.background) this.index.scan();
      this.conn.generation++;
      this.conn.down = undefined;
      if (opts.background) void this.index.scanInBackground();
    } catch (e) {
      this.closeSessions();
      const err = toTokenError(e, `region ${this.settings.region}`);
      this.conn.down = err.message;
      throw err;
    }
  }

  /** True while the object index is built in the background (lookups that miss wait for it). */
  get indexBuilding(): boolean {
    return this.index.building !== undefined;
  }

  /** Settles when a running background build of the index turns out to be a large token's (see ObjectIndex.large). */
  get indexIsLarge(): Promise<void> {
    return this.index.large;
  }

  /** Settles when the object index holds every token object (at once unless a background build runs). */
  get indexed(): Promise<void> {
    return this.index.building?.catch(() => undefined) ?? Promise.resolve();
  }

  private closeSessions(): void {
    this.conn.closeSessions();
    this.index.clear();
    this.copies.clear(); // closing the holder session destroyed the copies
  }

  close(): void {
    this.closeSessions();
    this.conn.down = 'closed';
  }

  /** Final shutdown: also stops the signing threads. */
  async shutdown(): Promise<void> {
    this.close();
    await this.signer?.close();
  }

  /** An operation is in flight off the main thread (the library must not be re-initialised now). */
  get busy(): boolean {
    return this.conn.poolBusy > 0 || (this.signer?.inFlight ?? 0) > 0;
  }

  /**
   * Takes the region out of service (503 for new requests) and waits until no async operation
   * is in flight, so the library can be re-initialised under it. Sync operations cannot be in
   * flight while this (JS-thread) code runs.
   */
  async drain(reason: string, timeoutMs = 5000): Promise<void> {
    this.conn.down = reason;
    const until = Date.now() + timeoutMs;
    while (this.busy && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
  }

  /** Marks the region down after a device-class failure; the daemon's retry loop reconnects. */
  private fail(e: unknown, what: string): never {
    const err = toTokenError(e, what);
    if (err.kind === 'unavailable') {
      this.conn.down = err.message;
      this.index.clear();
      this.copies.clear();
    }
    throw err;
  }

  private get p11(): pkcs11js.PKCS11 {
    return this.conn.p11;
  }

  // ---- the object index ----------------------------------------------------------------------

  /** Every CKA_ID on the token that starts with `prefix` (used by reconciliation). */
  listObjectIds(prefix: Buffer): Buffer[] {
    return this.index.listObjectIds(prefix);
  }

  get objectCount(): number {
    return this.index.size;
  }

  /** Handle of the object with this CKA_ID and class: cache first, one C_FindObjects on a miss. */
  handle(ckaId: Buffer, cls: ObjectClass): pkcs11js.Handle {
    return this.index.handle(ckaId, cls);
  }

  /** Drops cached handles of this CKA_ID and destroys its working copies, if any. */
  forget(ckaId: Buffer): void {
    this.index.forget(ckaId);
    this.copies.drop(ckaId);
  }

  /** Number of live working copies (metrics and tests). */
  get workingCopies(): number {
    return this.copies.count;
  }

  /** See ObjectIndex.exists: a miss not yet followed by an index re-read throws a waitable TokenError. */
  exists(ckaId: Buffer, cls: ObjectClass): boolean {
    return this.index.exists(ckaId, cls);
  }

  cacheHandle(ckaId: Buffer, cls: ObjectClass, h: pkcs11js.Handle): void {
    this.index.set(ckaId, cls, h);
  }

  /**
   * Runs a synchronous operation on a cached handle; if the handle went stale (object
   * destroyed and re-created by another process) it re-resolves once.
   */
  private withHandle<T>(ckaId: Buffer, cls: ObjectClass, what: string, fn: (h: pkcs11js.Handle) => T): T {
    return this.onHandle(ckaId, what, () => this.index.handle(ckaId, cls), fn);
  }

  /** The same on a secret key's working copy: the symmetric operations. */
  private withWorkingCopy<T>(ckaId: Buffer, what: string, fn: (h: pkcs11js.Handle) => T, cls: ObjectClass = 'secret'): T {
    return this.onHandle(ckaId, what, () => this.copies.handle(ckaId, cls), fn);
  }

  private onHandle<T>(ckaId: Buffer, what: string, resolve: () => pkcs11js.Handle, fn: (h: pkcs11js.Handle) => T): T {
    try {
      return fn(resolve());
    } catch (e) {
      const err = toTokenError(e, what);
      this.conn.renewSyncSession(err);
      if (err.kind !== 'staleHandle' || err.rereading) return this.fail(err, what);
      this.forget(ckaId);
      try {
        return fn(resolve());
      } catch (e2) {
        return this.fail(e2, what);
      }
    }
  }

  /** An async operation on a pooled session with the object's handle (`working`: its working copy). */
  private async withSessionAndHandle<T>(
    ckaId: Buffer,
    cls: ObjectClass,
    what: string,
    fn: (p11: pkcs11js.PKCS11, s: pkcs11js.Handle, h: pkcs11js.Handle) => Promise<T>,
    working = false,
  ): Promise<T> {
    const p11 = this.p11;
    const started = performance.now();
    const resolve = () => (working ? this.copies.handle(ckaId, cls) : this.index.handle(ckaId, cls));
    try {
      return await this.conn.pool!.use(async (s) => {
        try {
          return await fn(p11, s, resolve());
        } catch (e) {
          const err = toTokenError(e, what);
          if (err.kind !== 'staleHandle' || err.rereading) throw err;
          this.forget(ckaId);
          return await fn(p11, s, resolve());
        }
      }, this.conn.renewSession);
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
      return await this.conn.pool!.use((s) => fn(p11, s));
    } catch (e) {
      return this.fail(e, what);
    } finally {
      this.timer(what, (performance.now() - started) / 1000);
    }
  }

  // ---- key generation -------------------------------------------------------------------

  /**
   * Creates a key in the token. A token whose mechanism list lacks what the key needs (see
   * `mechanismsFor`) is refused with TokenError 'unsupported' (400 UnsupportedOperation) naming it.
   */
  async generate(spec: TokenKeySpec, o: ObjectOptions): Promise<void> {
    this.requireMechanisms(spec);
    if (spec.kind === 'aes' || spec.kind === 'hmac' || spec.kind === 'chacha20') {
      const { mechanism, template } = secretKeyTemplate(spec, o);
      const h = await this.retryTransient(o, () => this.withSession('generate', (p11, s) => p11.C_GenerateKeyAsync(s, { mechanism }, template)));
      if (o.token !== false) this.index.set(o.ckaId, 'secret', h);
      return;
    }
    const t = keyPairTemplate(spec, o);
    const pair = await this.retryTransient(o, () =>
      this.withSession('generate', (p11, s) => p11.C_GenerateKeyPairAsync(s, { mechanism: t.mechanism }, t.publicTemplate, t.privateTemplate)),
    );
    if (o.token !== false) {
      this.index.set(o.ckaId, 'private', pair.privateKey);
      this.index.set(o.ckaId, 'public', pair.publicKey);
    }
  }

  private requireMechanisms(spec: TokenKeySpec): void {
    const offered = this.conn.mechanisms;
    if (!offered.size) return; // not connected: the operation itself answers 503
    const missing = mechanismsFor(spec).filter((m) => !offered.has(m.mechanism));
    if (missing.length)
      throw new TokenError(
        'unsupported',
        0x70,
        `the token of region ${this.settings.region} does not offer ${missing.map((m) => m.name).join(' and ')}, which ${spec.kind} keys need`,
      );
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
      this.index.set(ckaId, 'private', pair.privateKey);
      this.index.set(ckaId, 'public', pair.publicKey);
    }
    return pair;
  }

  /** Destroys every object (secret, private, public) with this CKA_ID. Idempotent. */
  async destroy(ckaId: Buffer): Promise<number> {
    let n = 0;
    this.forget(ckaId);
    for (const cls of ['secret', 'private', 'public'] as ObjectClass[]) {
      for (;;) {
        const h = this.index.find(ckaId, cls);
        if (!h) break;
        try {
          this.p11.C_DestroyObject(this.conn.syncSession!, h);
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
      this.p11.C_DestroyObject(this.conn.syncSession!, h);
    } catch (e) {
      const err = toTokenError(e, 'C_DestroyObject');
      if (err.kind !== 'staleHandle') this.fail(err, 'C_DestroyObject');
    }
  }

  // ---- symmetric (synchronous: cheaper than the thread-pool hop) --------------------------

  aesGcmEncrypt(ckaId: Buffer, iv: Buffer, aad: Buffer, plaintext: Buffer): Buffer {
    const started = performance.now();
    const out = this.withWorkingCopy(ckaId, 'encrypt', (h) => {
      const p11 = this.p11;
      const s = this.conn.syncSession!;
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
      const s = this.conn.syncSession!;
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
        const s = this.conn.syncSession!;
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
      const s = this.conn.syncSession!;
      p11.C_SignInit(s, { mechanism }, h);
      return p11.C_Sign(s, input(data), Buffer.allocUnsafe(64));
    });
    this.timer('hmac', (performance.now() - started) / 1000);
    return out;
  }

  /** Random bytes from the token's RNG (data keys). */
  random(bytes: number): Buffer {
    try {
      return this.p11.C_GenerateRandom(this.conn.syncSession!, Buffer.alloc(bytes));
    } catch (e) {
      return this.fail(e, 'C_GenerateRandom');
    }
  }

  // ---- asymmetric (async) -----------------------------------------------------------------

  /**
   * Signs with the private key's working copy: SoftHSM2 re-reads a token object's file on every
   * C_SignInit, a session copy it does not (the same reason as for the symmetric keys). The
   * copy lives in the holder session; the signing threads' own sessions use it too (session
   * objects belong to the process, not to one session).
   */
  sign(ckaId: Buffer, mechanism: pkcs11js.Mechanism, data: Buffer): Promise<Buffer> {
    if (this.loopSigning && LOOP_SIGN_MECHANISMS.has(mechanism.mechanism)) return this.queueLoopSign(ckaId, mechanism, data);
    return this.signOffLoop(ckaId, mechanism, data);
  }

  private signOffLoop(ckaId: Buffer, mechanism: pkcs11js.Mechanism, data: Buffer): Promise<Buffer> {
    if (this.startSigner()?.usable) return this.signOnThreads(ckaId, mechanism, data);
    return this.withSessionAndHandle(
      ckaId,
      'private',
      'sign',
      (p11, s, h) => {
        p11.C_SignInit(s, mechanism, h);
        return p11.C_SignAsync(s, input(data), Buffer.allocUnsafe(1024));
      },
      true,
    );
  }

  /**
   * Signatures on the event loop, on the sync session. Why: on SoftHSM2 an EdDSA signature costs
   * ~170 µs of CPU and an ECDSA P-256 one ~50 µs, and handing it to a signing thread adds ~30–45
   * µs of CPU per signature (post, clone, wake-up, reply; measured) — with every core already
   * running a kmsd process that hop buys no parallelism, only cost. The signatures requested in
   * one event-loop turn run back to back (TokenBurst: CPU caches), at most LOOP_SIGN_BUDGET_MS
   * per run, the rest in the next turn after I/O; a token whose signatures turn out slow (a
   * remote module, a loaded HSM) leaves the loop for good.
   */
  private queueLoopSign(ckaId: Buffer, mechanism: pkcs11js.Mechanism, data: Buffer): Promise<Buffer> {
    // Found slow while queued: the rest goes off the loop after all.
    return this.loopSigns.run(() => (this.loopSigning ? this.signHere(ckaId, mechanism, data) : this.signOffLoop(ckaId, mechanism, data)));
  }

  private signHere(ckaId: Buffer, mechanism: pkcs11js.Mechanism, data: Buffer): Buffer {
    const started = performance.now();
    try {
      const signature = this.withWorkingCopy(
        ckaId,
        'sign',
        (h) => {
          const p11 = this.p11;
          const s = this.conn.syncSession!;
          p11.C_SignInit(s, mechanism, h);
          return p11.C_Sign(s, input(data), Buffer.allocUnsafe(1024));
        },
        'private',
      );
      this.loopSignatures++;
      return signature;
    } finally {
      const ms = performance.now() - started;
      this.timer('sign', ms / 1000);
      this.slowLoopSigns = ms > LOOP_SIGN_SLOW_MS ? this.slowLoopSigns + 1 : 0;
      if (this.slowLoopSigns >= LOOP_SIGN_SLOW_RUN) this.loopSigning = false;
    }
  }

  /** Whether signatures still run on the event loop (false once they were found slow; tests). */
  get signingOnLoop(): boolean {
    return this.loopSigning;
  }

  /**
   * The signing threads, started on first use: a daemon that never signs does not pay for them
   * (~8–9 MB of RSS each, and their start competes with the daemon's own at a cold start).
   */
  private startSigner(): SignerThreads | undefined {
    const n = this.settings.signerThreads ?? 0;
    if (!this.signer && n > 0) this.signer = new SignerThreads(this.settings.modulePath, n);
    return this.signer;
  }

  private async signOnThreads(ckaId: Buffer, mechanism: pkcs11js.Mechanism, data: Buffer): Promise<Buffer> {
    void this.p11; // throws 503 while the region is down
    const started = performance.now();
    const generation = this.conn.generation;
    const attempt = () => this.signer!.sign(generation, this.conn.slot!, this.copies.handle(ckaId, 'private'), mechanism, data);
    try {
      try {
        return await attempt();
      } catch (e) {
        if (!this.signer!.usable) return await this.sign(ckaId, mechanism, data); // a thread died: the async path
        const err = toTokenError(e, 'sign');
        if (err.ckr === 0x190 && this.available && generation === this.conn.generation) {
          // CKR_CRYPTOKI_NOT_INITIALIZED in a thread while this one has the library initialised: the
          // module gives each loader its own instance (p11-kit-client.so opens a connection per
          // C_GetFunctionList), so the threads cannot share this process's login and handles.
          this.signer!.disable();
          return await this.sign(ckaId, mechanism, data);
        }
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
      const [kt] = p11.C_GetAttributeValue(this.conn.syncSession!, h, [{ type: pkcs11js.CKA_KEY_TYPE }]);
      const keyType = (kt!.value as Buffer).readUInt32LE(0);
      if (keyType === pkcs11js.CKK_RSA) {
        const [m, e] = p11.C_GetAttributeValue(this.conn.syncSession!, h, [
          { type: pkcs11js.CKA_MODULUS },
          { type: pkcs11js.CKA_PUBLIC_EXPONENT },
        ]);
        return { kind: 'rsa', modulus: m!.value as Buffer, publicExponent: e!.value as Buffer };
      }
      const [p, q] = p11.C_GetAttributeValue(this.conn.syncSession!, h, [
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
      return this.p11.C_CreateObject(this.conn.syncSession!, template);
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
        this.conn.syncSession!,
        h,
        types.map((type) => ({ type })),
      );
      return new Map(attrs.map((a) => [a.type, a.value as Buffer]));
    } catch (e) {
      return this.fail(e, 'C_GetAttributeValue');
    }
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

/** Mechanisms cheap enough to sign on the event loop (RSA is not: 1–10 ms a signature on SoftHSM2). */
const LOOP_SIGN_MECHANISMS = new Set<number>([CKM_EDDSA, pkcs11js.CKM_ECDSA]);
/** At most this much signing per run on the loop before I/O gets its turn (event-loop delay goal: 50 ms). */
const LOOP_SIGN_BUDGET_MS = 10;
/** A signature slower than this, LOOP_SIGN_SLOW_RUN times in a row, takes signing off the loop. */
const LOOP_SIGN_SLOW_MS = 1;
const LOOP_SIGN_SLOW_RUN = 8;

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
