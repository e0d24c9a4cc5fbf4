import pkcs11js from 'pkcs11js';
import { TokenError } from './errors.js';
import { SESSION_FLAGS, type TokenConnection } from './connection.js';

const { CKA_CLASS, CKA_ID, CKO_SECRET_KEY, CKO_PRIVATE_KEY, CKO_PUBLIC_KEY } = pkcs11js;

export type ObjectClass = 'secret' | 'private' | 'public';
export const CLASS_VALUE: Record<ObjectClass, number> = { secret: CKO_SECRET_KEY, private: CKO_PRIVATE_KEY, public: CKO_PUBLIC_KEY };

/** Objects indexed per slice of the background scan (~30 ms of work at SoftHSM2's pace). */
const SCAN_SLICE = 500;
/** A token with more objects than this is indexed wholly in the background (see RegionRegistry). */
export const LARGE_TOKEN_OBJECTS = 2 * SCAN_SLICE;

export function cacheKey(cls: number, ckaId: Buffer): string {
  return `${cls}:${ckaId.toString('hex')}`;
}

/**
 * The CKA_ID → handle index of one token's objects: built by one full scan when the token
 * connects (the only scan: `C_FindObjects` walks every object, 0.1–0.3 s at 4–15k objects),
 * kept up to date by kmsd's own creates and destroys, and asked of the token by CKA_ID only on a
 * miss. A miss of an object the database says exists starts a re-read of the index (see `handle`).
 */
export class ObjectIndex {
  private readonly handles = new Map<string, pkcs11js.Handle>();
  /** CKA_ID cache key → connection generation when it was first missed. */
  private readonly missing = new Map<string, number>();
  /** Objects the last scan could not read (reported by readiness details and logs). */
  unreadable = 0;
  /**
   * Set by the registry: called when an object that should exist is not visible; returns the
   * re-read of the object index that will show it (scheduled or running).
   */
  onMissingObject?: () => Promise<void>;
  /** Set while the index is built in the background (start-up); settles when it holds every object. */
  building?: Promise<void>;
  /** Settles once the running background build has indexed more than LARGE_TOKEN_OBJECTS (never for a small token). */
  large: Promise<void> = new Promise(() => {});

  constructor(
    private readonly conn: TokenConnection,
    /** Classifies a failure, marks the region down on device errors, and throws. */
    private readonly fail: (e: unknown, what: string) => never,
  ) {}

  clear(): void {
    this.handles.clear();
    this.building = undefined;
    this.large = new Promise(() => {});
  }

  get size(): number {
    return this.handles.size;
  }

  set(ckaId: Buffer, cls: ObjectClass, h: pkcs11js.Handle): void {
    this.handles.set(cacheKey(CLASS_VALUE[cls], ckaId), h);
  }

  /** Drops the cached handles of this CKA_ID (every class). */
  forget(ckaId: Buffer): void {
    for (const cls of Object.values(CLASS_VALUE)) {
      const key = cacheKey(cls, ckaId);
      this.handles.delete(key);
      if (this.building) this.forgotten.add(key);
    }
  }

  /** Objects forgotten while the background scan runs (it must not put them back). */
  private readonly forgotten = new Set<string>();

  /** Indexes every token object by class and CKA_ID (at connect, on the sync session). */
  scan(): void {
    const p11 = this.conn.lib!.p11;
    const s = this.conn.syncSession!;
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

  /**
   * The same scan in slices of SCAN_SLICE objects with the event loop free in between, on a
   * session of its own (a search stays open across the slices): the daemon serves while a large
   * token is indexed (SoftHSM2 at 20,000 objects: ~1.2 s of search and CKA_ID reads). Until it is
   * done a lookup that misses waits for it (`building`), never a C_FindObjects per request.
   * Stops, without error, when the connection is replaced meanwhile (that connect scanned again).
   */
  scanInBackground(): Promise<void> {
    const generation = this.conn.generation;
    const lib = this.conn.lib!;
    const p11 = lib.p11;
    const session = p11.C_OpenSession(this.conn.slot!, SESSION_FLAGS);
    const current = () => this.conn.generation === generation && this.conn.lib === lib && this.conn.down === undefined;
    let isLarge!: () => void;
    this.large = new Promise<void>((r) => (isLarge = r));
    const run = (async () => {
      this.unreadable = 0;
      let seen = 0;
      try {
        // After a turn of the event loop: on SoftHSM2 the search's start alone walks every object
        // (0.3 s at 20,000), which must not hold up the connect itself.
        await new Promise((r) => setImmediate(r));
        if (!current()) return;
        p11.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_TOKEN, value: true }]);
        for (;;) {
          await new Promise((r) => setImmediate(r));
          if (!current()) return;
          const batch = p11.C_FindObjects(session, SCAN_SLICE);
          if (!batch.length) break;
          for (const h of batch) this.index(p11, session, h);
          if ((seen += batch.length) > LARGE_TOKEN_OBJECTS) isLarge();
        }
      } finally {
        try {
          p11.C_CloseSession(session); // also ends the search
        } catch {
          /* the library was re-initialised meanwhile */
        }
      }
    })();
    // never a rejected promise for waiters: a failed scan leaves lookups to the per-miss path
    const settled = run.catch(() => undefined).finally(() => {
      if (this.building !== settled) return;
      this.building = undefined;
      this.forgotten.clear();
    });
    this.building = settled;
    return settled;
  }

  private index(p11: pkcs11js.PKCS11, session: pkcs11js.Handle, h: pkcs11js.Handle): void {
    let attrs;
    try {
      attrs = p11.C_GetAttributeValue(session, h, [{ type: CKA_CLASS }, { type: CKA_ID }]);
    } catch {
      // An object the token cannot read back (seen after a kill -9 mid-write): skip, count, go on.
      this.unreadable++;
      return;
    }
    const [cls, id] = attrs;
    if (!id?.value || !(id.value as Buffer).length) return;
    const key = cacheKey((cls!.value as Buffer).readUInt32LE(0), id.value as Buffer);
    if (!this.forgotten.has(key)) this.handles.set(key, h);
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

  /** Handle of the object with this CKA_ID and class: cache first, one C_FindObjects on a miss. */
  handle(ckaId: Buffer, cls: ObjectClass): pkcs11js.Handle {
    const key = cacheKey(CLASS_VALUE[cls], ckaId);
    const cached = this.handles.get(key);
    if (cached) return cached;
    if (this.building) throw new TokenError('staleHandle', 0x82, `the token's object index is still being built`, this.building);
    const found = this.find(ckaId, cls);
    if (!found) {
      // Callers only look up objects the database says exist. SoftHSM2 2.6.1 can miss an object
      // another process created at the same moment as one of its own writes (both bump the
      // generation counter; this process never sees the counter move, so it never re-reads the
      // token directory). Only re-initialising the library re-reads it: ask the registry to do
      // so, once since the first miss; an object still missing after that is really gone and
      // must not make every later request re-initialise the library. The caller waits for that
      // re-read (TokenError.rereading) and tries again.
      const reread = this.rereadFor(key);
      throw new TokenError('staleHandle', 0x82, `no ${cls} object with CKA_ID ${ckaId.toString()} visible on the token`, reread);
    }
    this.handles.set(key, found);
    return found;
  }

  /**
   * Whether the object is on the token, asked of the token itself. A miss that no object-index
   * re-read has followed yet throws a TokenError with `rereading` (wait for it, ask again):
   * SoftHSM2 may hide an object another process just created.
   */
  exists(ckaId: Buffer, cls: ObjectClass): boolean {
    const key = cacheKey(CLASS_VALUE[cls], ckaId);
    if (this.building && !this.handles.has(key)) throw new TokenError('staleHandle', 0x82, `the token's object index is still being built`, this.building);
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

  /**
   * The re-read to wait for after a miss of `key`, or undefined when one already ran since the
   * first miss (then the object is really gone).
   */
  private rereadFor(key: string): Promise<void> | undefined {
    const firstMissAt = this.missing.get(key);
    if (firstMissAt !== undefined && firstMissAt !== this.conn.generation) return undefined;
    if (firstMissAt === undefined) {
      if (this.missing.size > 10_000) this.missing.clear();
      this.missing.set(key, this.conn.generation);
    }
    return this.onMissingObject?.();
  }

  /** The token object (never a session copy) with this CKA_ID and class, by one C_FindObjects. */
  find(ckaId: Buffer, cls: ObjectClass): pkcs11js.Handle | undefined {
    const p11 = this.conn.p11;
    // Token objects only: a working copy carries the same CKA_ID and class.
    const template = [
      { type: CKA_CLASS, value: CLASS_VALUE[cls] },
      { type: CKA_ID, value: ckaId },
      { type: pkcs11js.CKA_TOKEN, value: true },
    ];
    try {
      try {
        p11.C_FindObjectsInit(this.conn.syncSession!, template);
      } catch (e) {
        // A find left open by an earlier failure must not wedge every later lookup.
        this.conn.renewSyncSession(e);
        p11.C_FindObjectsInit(this.conn.syncSession!, template);
      }
      const s = this.conn.syncSession!;
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
}
