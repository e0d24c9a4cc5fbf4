import pkcs11js from 'pkcs11js';
import { TokenError, toTokenError } from './errors.js';
import { Pkcs11Library } from './module.js';
import { TokenSessionPool } from './session-pool.js';

export const SESSION_FLAGS = pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION;

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
  /**
   * EdDSA and ECDSA signatures run on the event loop itself while they stay fast (see
   * RegionToken.sign): right when every core already runs a kmsd process, so a thread hop only
   * adds work.
   */
  signOnLoop?: boolean;
}

/**
 * The library and session lifecycle of one region's token: the loaded module, the slot, the
 * login, the sessions (one for synchronous calls, one that holds working copies, a pool for
 * async calls) and whether the region is usable (`down` names why not).
 */
export class TokenConnection {
  lib?: Pkcs11Library;
  slot?: pkcs11js.Handle;
  pool?: TokenSessionPool;
  /** Synchronous operations (AES-GCM, HMAC, lookups) run here, one at a time on the JS thread. */
  syncSession?: pkcs11js.Handle;
  /** The session that owns the working copies; never used for operations, so never renewed. */
  holderSession?: pkcs11js.Handle;
  private allSessions: pkcs11js.Handle[] = [];
  /** Why the region is not usable; undefined when it is. */
  down: string | undefined = 'not connected yet';
  /** The pending re-read of the token's object index (set by the registry), if any. */
  rereading?: Promise<void>;
  mechanisms = new Set<number>();
  manufacturer = '';
  model = '';
  serial = '';
  /** Successful connects (each object-index re-read is one); signer threads reopen sessions when it moves. */
  generation = 0;

  constructor(readonly settings: TokenSettings) {}

  /** Loads the module, finds the token, reads its info and mechanisms, opens sessions and logs in. */
  open(): void {
    const s = this.settings;
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
  }

  closeSessions(): void {
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
  }

  /** The module's functions while the region is usable; else a TokenError 'unavailable' (503). */
  get p11(): pkcs11js.PKCS11 {
    if (this.down !== undefined || !this.lib) throw new TokenError('unavailable', 0xe0, this.down ?? 'not connected', this.rereading);
    return this.lib.p11;
  }

  /** Sessions lent to async operations right now. */
  get poolBusy(): number {
    return this.pool?.busy ?? 0;
  }

  /**
   * Replaces a session whose operation a failed call left active (SoftHSM2 does so on
   * CKR_ARGUMENTS_BAD; later calls then get CKR_OPERATION_ACTIVE). Only for those two codes:
   * closing a session also destroys the session objects it created (probe pairs, BYOK
   * ephemeral keys), so a session is never recycled for ordinary failures.
   */
  renewSession = (old: pkcs11js.Handle, error: unknown): pkcs11js.Handle => {
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

  /** Renews the synchronous session after a failure that left an operation active on it. */
  renewSyncSession(error: unknown): void {
    if (this.syncSession) this.syncSession = this.renewSession(this.syncSession, error);
  }
}
