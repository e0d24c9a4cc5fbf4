import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import pkcs11js from 'pkcs11js';
import { TokenError, toTokenError } from './errors.js';

/** CKR_CRYPTOKI_ALREADY_INITIALIZED */
const ALREADY_INITIALIZED = 0x191;

/** A library whose C_Initialize runs on a worker thread (see `initializeInBackground`). */
interface BackgroundInit {
  /** Loaded (dlopen) on the main thread first: the library stays resident when the thread ends. */
  p11: pkcs11js.PKCS11;
  worker: Worker;
  /** Settles when the thread's C_Initialize returned (never rejects). */
  done: Promise<void>;
  settled: boolean;
}

/**
 * One loaded PKCS#11 library per path, initialised once per process. CKF_OS_LOCKING_OK is
 * mandatory: without it pkcs11js async calls on several sessions corrupt memory (seen here).
 */
export class Pkcs11Library {
  private static readonly loaded = new Map<string, Pkcs11Library>();
  private static readonly starting = new Map<string, BackgroundInit>();

  private constructor(
    readonly path: string,
    readonly p11: pkcs11js.PKCS11,
  ) {}

  /**
   * Starts the library's C_Initialize on a short-lived worker thread; the promise settles when
   * it returned (never rejects: `open` then initialises on this thread and reports any failure
   * itself). Why: SoftHSM2's file store reads and decodes every object in C_Initialize (0.7–2 s
   * at 15,000–20,000 objects) and pkcs11js has no async form of it; on the main thread it held
   * the event loop, so the key metadata load, the audit writer's start and the MongoDB
   * connection could not proceed meanwhile. The library is initialised once per process
   * whichever thread asks, so the later `open` here gets CKR_CRYPTOKI_ALREADY_INITIALIZED and
   * uses it; a module that gives every loader its own instance (p11-kit-client.so) initialises
   * again in `open`, and the thread then finalises its own instance before it ends.
   */
  static initializeInBackground(path: string): Promise<void> {
    const known = Pkcs11Library.starting.get(path);
    if (known) return known.done;
    if (Pkcs11Library.loaded.has(path)) return Promise.resolve();
    const p11 = new pkcs11js.PKCS11();
    try {
      p11.load(path);
    } catch {
      return Promise.resolve(); // `open` reports it
    }
    const worker = new Worker(new URL(import.meta.url), { workerData: { kmsdInitialize: path } });
    const entry: BackgroundInit = { p11, worker, done: Promise.resolve(), settled: false };
    entry.done = new Promise<void>((resolve) => {
      const settle = () => {
        entry.settled = true;
        resolve();
      };
      worker.once('message', settle);
      worker.once('error', settle);
      worker.once('exit', settle);
    });
    Pkcs11Library.starting.set(path, entry);
    return entry.done;
  }

  /** initializeInBackground for the library of every region (each library once). */
  static initializeAllInBackground(regions: { pkcs11Module: string }[]): void {
    for (const path of new Set(regions.map((r) => r.pkcs11Module))) void Pkcs11Library.initializeInBackground(path);
  }

  /** The pending background C_Initialize of this library, if one was started (see above). */
  static initializing(path: string): Promise<void> | undefined {
    return Pkcs11Library.starting.get(path)?.done;
  }

  static open(path: string): Pkcs11Library {
    const existing = Pkcs11Library.loaded.get(path);
    if (existing) return existing;
    const background = Pkcs11Library.starting.get(path);
    // Two C_Initialize calls at once on one library are not allowed; callers await `initializing` first.
    if (background && !background.settled) throw new TokenError('unavailable', 0x190, `PKCS#11 module ${path} is still initialising`);
    let p11 = background?.p11;
    if (!p11) {
      p11 = new pkcs11js.PKCS11();
      try {
        p11.load(path);
      } catch (e) {
        throw toTokenError(e, `loading PKCS#11 module ${path}`);
      }
    }
    let shared = false;
    try {
      p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch (e) {
      // The background thread initialised it, or the same library was reached through another path.
      if (!(e instanceof pkcs11js.Pkcs11Error && e.code === ALREADY_INITIALIZED)) {
        Pkcs11Library.endBackground(path, background, false);
        throw toTokenError(e, `C_Initialize of ${path}`);
      }
      shared = true;
    }
    Pkcs11Library.endBackground(path, background, shared);
    const lib = new Pkcs11Library(path, p11);
    Pkcs11Library.loaded.set(path, lib);
    return lib;
  }

  /** Lets the initialising thread end: it finalises its instance unless that is the one in use here. */
  private static endBackground(path: string, background: BackgroundInit | undefined, shared: boolean): void {
    if (!background) return;
    Pkcs11Library.starting.delete(path);
    background.worker.postMessage({ finalize: !shared });
    background.worker.unref();
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
    for (const b of Pkcs11Library.starting.values()) void b.worker.terminate();
    Pkcs11Library.starting.clear();
  }
}

/**
 * The initialising thread: C_Initialize, report, then wait to hear whether the main thread got
 * the same instance (keep it) or its own (finalise this one) before ending.
 */
function runInitializer(path: string): void {
  const p11 = new pkcs11js.PKCS11();
  let initialized = false;
  try {
    p11.load(path);
    p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    initialized = true;
  } catch {
    /* the main thread's own C_Initialize reports it */
  }
  parentPort!.postMessage({ initialized });
  parentPort!.once('message', (m: { finalize: boolean }) => {
    if (initialized && m.finalize)
      try {
        p11.C_Finalize();
      } catch {
        /* nothing to finalise */
      }
    parentPort!.close();
  });
}

if (!isMainThread && (workerData as { kmsdInitialize?: string })?.kmsdInitialize) runInitializer((workerData as { kmsdInitialize: string }).kmsdInitialize);
