import pkcs11js from 'pkcs11js';
import { toTokenError } from './errors.js';

/**
 * One loaded PKCS#11 library per path, initialised once per process. CKF_OS_LOCKING_OK is
 * mandatory: without it pkcs11js async calls on several sessions corrupt memory (seen here).
 */
export class Pkcs11Library {
  private static readonly loaded = new Map<string, Pkcs11Library>();

  private constructor(
    readonly path: string,
    readonly p11: pkcs11js.PKCS11,
  ) {}

  static open(path: string): Pkcs11Library {
    const existing = Pkcs11Library.loaded.get(path);
    if (existing) return existing;
    const p11 = new pkcs11js.PKCS11();
    try {
      p11.load(path);
    } catch (e) {
      throw toTokenError(e, `loading PKCS#11 module ${path}`);
    }
    try {
      p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch (e) {
      // 0x191 = CKR_CRYPTOKI_ALREADY_INITIALIZED: the same library reached through another path.
      if (!(e instanceof pkcs11js.Pkcs11Error && e.code === 0x191)) throw toTokenError(e, `C_Initialize of ${path}`);
    }
    const lib = new Pkcs11Library(path, p11);
    Pkcs11Library.loaded.set(path, lib);
    return lib;
  }

  /**
   * C_Finalize + C_Initialize: the only way SoftHSM2 (and many modules) notice a token that
   * appeared after C_Initialize. Invalidates every session of this library, so the registry
   * only does it when no region on this library is in use.
   */
  reinitialize(): void {
    try {
      this.p11.C_Finalize();
    } catch {
      /* not initialised */
    }
    this.p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  }

  /** Finds the slot whose token carries `label` (labels are blank-padded to 32 bytes). */
  findSlot(label: string): pkcs11js.Handle | undefined {
    for (const slot of this.p11.C_GetSlotList(true)) {
      const info = this.p11.C_GetTokenInfo(slot);
      if (info.label.trim() === label) return slot;
    }
    return undefined;
  }

  static get(path: string): Pkcs11Library | undefined {
    return Pkcs11Library.loaded.get(path);
  }

  static finalizeAll(): void {
    for (const lib of Pkcs11Library.loaded.values()) {
      try {
        lib.p11.C_Finalize();
      } catch {
        /* already finalised */
      }
      try {
        lib.p11.close();
      } catch {
        /* ignore */
      }
    }
    Pkcs11Library.loaded.clear();
  }
}
