import type { Logger } from 'winston';
import { notFound, regionUnavailable } from '../errors.js';
import { probeOaepHashes } from './probe.js';
import { Pkcs11Library } from './module.js';
import { LARGE_TOKEN_OBJECTS } from './object-index.js';
import { RegionToken } from './region-token.js';
import { awaitingReread } from './reread.js';
import type { HashName } from './constants.js';

/**
 * Every configured region's token. A region whose token is missing, logged out or failing
 * with CKR_DEVICE_* is marked unavailable (503) and reconnected in the background; the process
 * and the other regions carry on.
 */
/** How long start-up waits for a token's object index before serving without it (ms). */
const INDEX_WAIT_AT_START_MS = 250;

/** Least time between two object-index re-reads of one library (ms). */
const REREAD_SPACING_MS = 200;
/**
 * Waits before each quick reconnect of a region whose first connect failed (ms): ~10 s in all,
 * as long as a request waits for it (REREAD_WAIT_MS); then the retry loop's 5-second pace.
 */
const QUICK_RECONNECT_MS = [50, 100, 200, 400, 800, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000];

export class RegionRegistry {
  private timer?: NodeJS.Timeout;
  /** Per library path: the object-index re-read that has not re-initialised the library yet. */
  private readonly refreshing = new Map<string, Promise<void>>();
  /** Per library path: when the last re-read ended and how long it took (ms). */
  private readonly lastRefresh = new Map<string, { at: number; took: number }>();
  /** Regions being reconnected quickly after a failed first connect (see recover). */
  private readonly recovering = new Set<string>();
  private readonly probes = new Map<string, Promise<HashName[]>>();
  private readonly lastProbe = new Map<string, number>();

  constructor(
    readonly tokens: Map<string, RegionToken>,
    private readonly log: Logger,
    private readonly onConnected: (region: string) => Promise<void> = async () => {},
    /** How many token objects the region is known to hold (its key versions): a large token is not waited for at all. */
    private readonly expectedObjects: (region: string) => number = () => 0,
  ) {}

  /**
   * Connects every token once; failures are logged and left to the retry loop. The object
   * indexes are built in the background: a large token (20,000 objects: seconds) does not hold
   * up readiness; requests for an object not indexed yet wait for it.
   */
  async connectAll(): Promise<void> {
    for (const t of this.tokens.values()) t.onMissingObject = () => this.refreshObjectIndex(t.settings.modulePath);
    // Libraries whose C_Initialize was started on a thread (see Pkcs11Library.initializeInBackground).
    await Promise.all([...this.tokens.values()].map((t) => Pkcs11Library.initializing(t.settings.modulePath)));
    for (const name of this.tokens.keys()) if (!(await this.tryConnect(name, false, true))) this.recover(name);
  }

  /**
   * Reconnects a region whose first connect failed a few times within ~10 s (re-initialising
   * the library when no other region uses it), and makes requests wait for that instead of
   * answering 503. Why: SoftHSM2 2.6.1 rewrites its token file on every login, and a process
   * that reads the file at that moment gets CKR_GENERAL_ERROR or no token label until it
   * re-initialises (measured: several kmsd workers, daemons or kmsctl starting together).
   */
  private recover(name: string): void {
    const t = this.tokens.get(name)!;
    if (this.recovering.has(name)) return;
    this.recovering.add(name);
    const run = (async () => {
      try {
        for (const ms of QUICK_RECONNECT_MS) {
          await new Promise((r) => setTimeout(r, ms));
          if (t.available || (await this.tryConnect(name, true, true))) return;
        }
      } finally {
        this.recovering.delete(name);
      }
    })();
    t.rereading = run;
    void run.finally(() => {
      if (t.rereading === run) t.rereading = undefined;
    });
  }

  private async tryConnect(name: string, retry = false, background = false): Promise<boolean> {
    const t = this.tokens.get(name)!;
    try {
      if (retry) this.reinitializeIfIdle(t);
      t.connect({ background });
    } catch (e) {
      this.log.warn('region token unavailable', { region: name, reason: (e as Error).message });
      return false;
    }
    // Off the start-up path: an RSA key pair generation and a few trial unwraps, after the index
    // build (on a large token both would compete for the CPU while the daemon starts serving).
    this.probes.set(name, t.indexed.then(() => this.probe(name)));
    const connected = async () => {
      this.log.info('region token connected', { region: name, tokenLabel: t.settings.label, objects: t.objectCount, unreadableObjects: t.unreadable, manufacturer: t.manufacturer });
      await this.onConnected(name).catch((e) => this.log.error('post-connect step failed', { region: name, error: (e as Error).message }));
    };
    // The post-connect steps (reconciliation reads the whole index) follow the index: awaited
    // when it is quickly built (a small token: as before), else in the background — at once when
    // the build has seen more objects than a small token holds (no fixed wait on a large one).
    let timer: NodeJS.Timeout | undefined;
    const built =
      this.expectedObjects(name) <= LARGE_TOKEN_OBJECTS &&
      (await Promise.race([
        t.indexed.then(() => true),
        t.indexIsLarge.then(() => false),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(false), INDEX_WAIT_AT_START_MS))),
      ]));
    clearTimeout(timer);
    if (built) await connected();
    else void t.indexed.then(connected);
    return true;
  }

  /**
   * Trial unwraps can fail transiently (seen with two daemons starting on one token at the same
   * moment), so an empty answer is retried before it is believed.
   */
  private async probe(name: string): Promise<HashName[]> {
    this.lastProbe.set(name, Date.now());
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const t = this.require(name);
        const hashes = await probeOaepHashes(t);
        if (hashes.length) return hashes;
      } catch (e) {
        this.log.warn('OAEP probe failed', { region: name, attempt, reason: (e as Error).message });
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    return [];
  }

  /**
   * The RSA-OAEP hashes the region's token can unwrap with, strongest first. An empty result is
   * probed again, at most once a minute, before anything is refused for it.
   */
  async oaepHashes(region: string): Promise<HashName[]> {
    this.require(region);
    let p = this.probes.get(region);
    if (!p || (!(await p).length && Date.now() - (this.lastProbe.get(region) ?? 0) > 60_000)) {
      p = this.probe(region);
      this.probes.set(region, p);
    }
    return p;
  }

  /**
   * A token that appeared (or came back) after C_Initialize is invisible until the library is
   * re-initialised; that is only safe when no other region uses the same library right now.
   */
  private reinitializeIfIdle(t: RegionToken): void {
    const path = t.settings.modulePath;
    const lib = Pkcs11Library.get(path);
    if (!lib) return;
    const siblings = [...this.tokens.values()].filter((o) => o.settings.modulePath === path);
    if (siblings.some((o) => o.available || o.busy)) return;
    for (const o of siblings) o.close();
    lib.reinitialize();
  }

  /**
   * Re-reads the token's objects by re-initialising its library (the only way SoftHSM2 picks up
   * objects it missed; see RegionToken.handle) and resolves when that is done. Single-flight per
   * library: every miss until the library is re-initialised joins the same re-read. Re-reads are
   * spaced by at least REREAD_SPACING_MS and twice the last one's duration (on a large token
   * a re-read holds the event loop for a second or more), so a flood of misses cannot keep the
   * region in re-reads. Requests wait for it (`throughReread`, bounded), none is refused.
   */
  refreshObjectIndex(modulePath: string): Promise<void> {
    const pending = this.refreshing.get(modulePath);
    if (pending) return pending;
    const lib = Pkcs11Library.get(modulePath);
    if (!lib) return Promise.resolve();
    const last = this.lastRefresh.get(modulePath);
    const delay = last ? Math.max(0, last.at + Math.max(REREAD_SPACING_MS, 2 * last.took) - Date.now()) : 0;
    const onLibrary = [...this.tokens.values()].filter((t) => t.settings.modulePath === modulePath);
    const run = (async () => {
      if (delay > 0) await new Promise((r) => setTimeout(r, delay));
      const siblings = onLibrary.filter((t) => t.available);
      await Promise.all(siblings.map((t) => t.drain('re-reading the token object index')));
      const started = Date.now();
      const failed: RegionToken[] = [];
      try {
        lib.reinitialize();
        for (const t of siblings)
          try {
            // the index is rebuilt in slices: other keys are served meanwhile, misses wait for it
            t.connect({ background: true });
          } catch (e) {
            this.log.warn('region token unavailable after object index refresh', { region: t.settings.region, reason: (e as Error).message });
            failed.push(t);
          }
      } catch (e) {
        // never a rejected promise: callers only wait on it
        this.log.error('re-initialising the PKCS#11 library failed', { modulePath, reason: (e as Error).message });
        failed.push(...siblings.filter((t) => !t.available && !failed.includes(t)));
      } finally {
        // In the same synchronous step as the re-initialisation: a miss seen after it needs a new re-read.
        this.lastRefresh.set(modulePath, { at: Date.now(), took: Date.now() - started });
        this.refreshing.delete(modulePath);
      }
      this.log.warn('re-initialised the PKCS#11 library to see objects another process created', { modulePath, ms: Date.now() - started });
      // e.g. another process logging in at that moment (see recover): reconnected quickly, waited for
      for (const t of failed) this.recover(t.settings.region);
    })();
    this.refreshing.set(modulePath, run);
    for (const t of onLibrary) {
      t.rereading = run;
      void run.finally(() => {
        if (t.rereading === run) t.rereading = undefined;
      });
    }
    return run;
  }

  startRetry(intervalMs = 5000): void {
    this.timer = setInterval(() => {
      for (const [name, t] of this.tokens) if (!t.available && !this.refreshing.has(t.settings.modulePath) && !this.recovering.has(name)) void this.tryConnect(name, true);
    }, intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await Promise.all([...this.tokens.values()].map((t) => t.shutdown()));
  }

  has(region: string): boolean {
    return this.tokens.has(region);
  }

  /** The region's token, or 404 (unconfigured) / 503 (configured but unusable). */
  require(region: string): RegionToken {
    const t = this.tokens.get(region);
    if (!t) throw notFound(`region ${region} not found`);
    // While the object index is re-read the 503 says so, and callers inside a request wait for it (throughReread).
    if (!t.available) throw awaitingReread(regionUnavailable(region, t.unavailableReason ?? 'token not usable'), t.rereading);
    return t;
  }
}
