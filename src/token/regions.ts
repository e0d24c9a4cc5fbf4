import type { Logger } from 'winston';
import { notFound, regionUnavailable } from '../errors.js';
import { probeOaepHashes } from './probe.js';
import { Pkcs11Library } from './module.js';
import { RegionToken } from './region-token.js';
import type { HashName } from './constants.js';

/**
 * Every configured region's token. A region whose token is missing, logged out or failing
 * with CKR_DEVICE_* is marked unavailable (503) and reconnected in the background; the process
 * and the other regions carry on.
 */
export class RegionRegistry {
  private timer?: NodeJS.Timeout;
  private readonly refreshing = new Map<string, Promise<void>>();
  private readonly lastRefresh = new Map<string, number>();
  readonly oaepHashes = new Map<string, HashName[]>();

  constructor(
    readonly tokens: Map<string, RegionToken>,
    private readonly log: Logger,
    private readonly onConnected: (region: string) => Promise<void> = async () => {},
  ) {}

  /** Connects every token once; failures are logged and left to the retry loop. */
  async connectAll(): Promise<void> {
    for (const t of this.tokens.values()) t.onMissingObject = () => this.refreshObjectIndex(t.settings.modulePath);
    for (const name of this.tokens.keys()) await this.tryConnect(name);
  }

  private async tryConnect(name: string, retry = false): Promise<boolean> {
    const t = this.tokens.get(name)!;
    try {
      if (retry) this.reinitializeIfIdle(t);
      t.connect();
    } catch (e) {
      this.log.warn('region token unavailable', { region: name, reason: (e as Error).message });
      return false;
    }
    this.log.info('region token connected', { region: name, tokenLabel: t.settings.label, objects: t.objectCount, unreadableObjects: t.unreadable, manufacturer: t.manufacturer });
    // Trial unwraps can fail transiently (e.g. another daemon starting on the same token at the
    // same moment, seen in tests): an empty answer is retried before it is believed.
    let hashes: string[] = [];
    for (let attempt = 0; attempt < 3 && !hashes.length; attempt++) {
      try {
        hashes = await probeOaepHashes(t);
      } catch (e) {
        this.log.warn('OAEP probe failed', { region: name, attempt, reason: (e as Error).message });
      }
      if (!hashes.length) await new Promise((r) => setTimeout(r, 200));
    }
    this.oaepHashes.set(name, hashes as HashName[]);
    await this.onConnected(name).catch((e) => this.log.error('post-connect step failed', { region: name, error: (e as Error).message }));
    return true;
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
    if (siblings.some((o) => o.available)) return;
    for (const o of siblings) o.close();
    lib.reinitialize();
  }

  /**
   * Re-reads the token's objects by re-initialising its library (the only way SoftHSM2 picks up
   * objects it missed; see RegionToken.handle). Single-flight per library and at most once a second;
   * the regions on that library answer 503 for the few milliseconds it takes.
   */
  refreshObjectIndex(modulePath: string): void {
    if (this.refreshing.has(modulePath) || Date.now() - (this.lastRefresh.get(modulePath) ?? 0) < 1000) return;
    const lib = Pkcs11Library.get(modulePath);
    if (!lib) return;
    const run = (async () => {
      const siblings = [...this.tokens.values()].filter((t) => t.settings.modulePath === modulePath && t.available);
      await Promise.all(siblings.map((t) => t.drain('re-reading the token object index')));
      lib.reinitialize();
      for (const t of siblings)
        try {
          t.connect();
        } catch (e) {
          this.log.warn('region token unavailable after object index refresh', { region: t.settings.region, reason: (e as Error).message });
        }
      this.log.warn('re-initialised the PKCS#11 library to see objects another process created', { modulePath });
    })().finally(() => {
      this.lastRefresh.set(modulePath, Date.now());
      this.refreshing.delete(modulePath);
    });
    this.refreshing.set(modulePath, run);
  }

  startRetry(intervalMs = 5000): void {
    this.timer = setInterval(() => {
      for (const [name, t] of this.tokens) if (!t.available && !this.refreshing.has(t.settings.modulePath)) void this.tryConnect(name, true);
    }, intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    for (const t of this.tokens.values()) t.close();
  }

  has(region: string): boolean {
    return this.tokens.has(region);
  }

  /** The region's token, or 404 (unconfigured) / 503 (configured but unusable). */
  require(region: string): RegionToken {
    const t = this.tokens.get(region);
    if (!t) throw notFound(`region ${region} not found`);
    if (!t.available) throw regionUnavailable(region, t.unavailableReason ?? 'token not usable');
    return t;
  }
}
