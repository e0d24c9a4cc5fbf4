import pkcs11js from 'pkcs11js';
import { toTokenError } from './errors.js';
import type { TokenConnection } from './connection.js';
import { cacheKey, CLASS_VALUE, type ObjectClass, type ObjectIndex } from './object-index.js';

/**
 * Session *working copies* of token objects (C_CopyObject with CKA_TOKEN false, made on first
 * use, held by a session that does nothing else). The copy lives in the token like the
 * original, keeps CKA_SENSITIVE and CKA_EXTRACTABLE false, and dies with the session. Why:
 * SoftHSM2's file store re-validates a token object against its file on every …Init, so one
 * AES-GCM operation costs ~45 µs on a token object and ~18 µs on a session object (measured,
 * pkcs11js 2.1.7, SoftHSM2 2.6.1). Copies are dropped when a version is destroyed (here, or by
 * another process via the key change feed) and, oldest first, when over the cap.
 */
export class WorkingCopies {
  /**
   * Handles for operations by cache key, oldest first: a working copy (`copied`, a session
   * object this class destroys) or, for a key the token would not copy, the token object itself
   * (never destroyed here).
   */
  private readonly working = new Map<string, { handle: pkcs11js.Handle; copied: boolean }>();

  constructor(
    private readonly conn: TokenConnection,
    private readonly index: ObjectIndex,
    /** At most this many copies (0: operate on the token objects). */
    private readonly cap: number,
  ) {}

  /** Forgets every copy without destroying it (closing the holder session destroyed them). */
  clear(): void {
    this.working.clear();
  }

  /** Number of live working copies (metrics and tests). */
  get count(): number {
    let n = 0;
    for (const e of this.working.values()) if (e.copied) n++;
    return n;
  }

  /**
   * The handle operations use: the object's working copy, made on first use. A token that
   * refuses the copy (CKA_COPYABLE false, no C_CopyObject) is operated on directly.
   */
  handle(ckaId: Buffer, cls: ObjectClass): pkcs11js.Handle {
    const key = cacheKey(CLASS_VALUE[cls], ckaId);
    const known = this.working.get(key);
    if (known) return known.handle;
    const original = this.index.handle(ckaId, cls);
    if (this.cap <= 0) return original;
    let entry: { handle: pkcs11js.Handle; copied: boolean };
    try {
      entry = { handle: this.conn.p11.C_CopyObject(this.conn.holderSession!, original, [{ type: pkcs11js.CKA_TOKEN, value: false }]), copied: true };
    } catch (e) {
      const err = toTokenError(e, 'C_CopyObject');
      if (err.kind === 'staleHandle' || err.kind === 'unavailable') throw err;
      entry = { handle: original, copied: false }; // not copyable: remembered, so the copy is not retried per request
    }
    if (this.working.size >= this.cap) this.dropKey(this.working.keys().next().value!);
    this.working.set(key, entry);
    return entry.handle;
  }

  /** Destroys the working copies of this CKA_ID (every class), if any. */
  drop(ckaId: Buffer): void {
    for (const cls of Object.values(CLASS_VALUE)) this.dropKey(cacheKey(cls, ckaId));
  }

  private dropKey(key: string): void {
    const entry = this.working.get(key);
    if (entry === undefined) return;
    this.working.delete(key);
    if (!entry.copied || !this.conn.lib || this.conn.down !== undefined) return; // a token object is never destroyed here
    try {
      this.conn.lib.p11.C_DestroyObject(this.conn.holderSession!, entry.handle);
    } catch {
      /* already gone with its session */
    }
  }
}
