import type { ChangeEntry, ChangesRepository } from '../store.js';
import type { SqlExecutor } from './sql.js';

/** The change log (table key_changes) other processes replay to keep their caches coherent. */
export class SqlChangesRepository implements ChangesRepository {
  constructor(private readonly q: SqlExecutor) {}

  async record(identity: string): Promise<void> {
    await this.q.run('INSERT INTO key_changes (key_identity) VALUES (?)', [identity]);
  }

  async since(seq: number): Promise<ChangeEntry[]> {
    const rows = await this.q.all<{ seq: number | string; key_identity: string }>('SELECT seq, key_identity FROM key_changes WHERE seq > ? ORDER BY seq', [seq]);
    return rows.map((r) => ({ seq: Number(r.seq), identity: r.key_identity }));
  }

  async last(): Promise<number> {
    const r = await this.q.get<{ s: number | string | null }>('SELECT MAX(seq) AS s FROM key_changes');
    return Number(r?.s ?? 0);
  }
}
