import type { KeysRepository } from '../store/store.js';
import { scopeKey, type KeyRecord } from './model.js';

/** In-memory view of every key's metadata: the hot path never reads SQLite. */
export class KeyCache {
  private readonly byId = new Map<string, KeyRecord>();
  private readonly byScope = new Map<string, string>();

  /** Called with a key that disappeared (destroyed, possibly by another process). */
  onRemoved: (k: KeyRecord) => void = () => {};

  constructor(private readonly repo: KeysRepository) {}

  async loadAll(): Promise<void> {
    this.byId.clear();
    this.byScope.clear();
    for (const k of await this.repo.loadAll()) this.put(k);
  }

  async reload(identities: Iterable<string>): Promise<void> {
    for (const id of identities) {
      const k = await this.repo.load(id);
      if (k) this.put(k);
      else this.remove(id);
    }
  }

  put(k: KeyRecord): void {
    const old = this.byId.get(k.identity);
    if (old) this.byScope.delete(scopeKey(old.organisation, old.region, old.project, old.slug));
    this.byId.set(k.identity, k);
    this.byScope.set(scopeKey(k.organisation, k.region, k.project, k.slug), k.identity);
  }

  remove(identity: string): void {
    const old = this.byId.get(identity);
    if (!old) return;
    this.byId.delete(identity);
    this.byScope.delete(scopeKey(old.organisation, old.region, old.project, old.slug));
    this.onRemoved(old);
  }

  get(identity: string): KeyRecord | undefined {
    return this.byId.get(identity);
  }

  bySlug(organisation: string, region: string, project: string, slug: string): KeyRecord | undefined {
    const id = this.byScope.get(scopeKey(organisation, region, project, slug));
    return id ? this.byId.get(id) : undefined;
  }

  all(): IterableIterator<KeyRecord> {
    return this.byId.values();
  }

  get size(): number {
    return this.byId.size;
  }
}
