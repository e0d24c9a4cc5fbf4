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
  readonly oaepHashes = new Map<string, HashName[]>();

  constructor(
    readonly tokens: Map<string, RegionToken>,
    private readonly log: Logger,
    private readonly onConnected: (region: string) => Promise<void> = async () => {},
  ) {}

  /** Connects every token once; failures are logged and left to the retry loop. */
  async connectAll(): Promise<void> {
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
    try {
      this.oaepHashes.set(name, await probeOaepHashes(t));
    } catch (e) {
      this.log.warn('OAEP probe failed', { region: name, reason: (e as Error).message });
      this.oaepHashes.set(name, []);
    }
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

  startRetry(intervalMs = 5000): void {
    this.timer = setInterval(() => {
      for (const [name, t] of this.tokens) if (!t.available) void this.tryConnect(name, true);
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
