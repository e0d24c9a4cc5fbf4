import type { WrappingKeyRecord, WrappingKeysRepository } from '../store.js';
import type { SqlExecutor } from './sql.js';

/** The regional BYOK wrapping key per region (table wrapping_keys). */
export class SqlWrappingKeysRepository implements WrappingKeysRepository {
  constructor(private readonly q: SqlExecutor) {}

  async get(region: string): Promise<WrappingKeyRecord | undefined> {
    const r = await this.q.get<{ cka_id: string; public_key_pem: string }>('SELECT cka_id, public_key_pem FROM wrapping_keys WHERE region = ?', [region]);
    return r && { region, ckaId: r.cka_id, publicKeyPem: r.public_key_pem };
  }

  async reserve(region: string, ckaId: string, nowIso: string): Promise<boolean> {
    const r = await this.q.run(
      "INSERT INTO wrapping_keys (region, cka_id, public_key_pem, created_at) VALUES (?, ?, '', ?) ON CONFLICT (region) DO NOTHING",
      [region, ckaId, nowIso],
    );
    return r.changes === 1;
  }

  async complete(region: string, ckaId: string, publicKeyPem: string): Promise<void> {
    await this.q.run('UPDATE wrapping_keys SET public_key_pem = ? WHERE region = ? AND cka_id = ?', [publicKeyPem, region, ckaId]);
  }

  async all(): Promise<(WrappingKeyRecord & { createdAt: string })[]> {
    const rows = await this.q.all<Record<string, string>>('SELECT * FROM wrapping_keys ORDER BY region');
    return rows.map((r) => ({ region: r.region!, ckaId: r.cka_id!, publicKeyPem: r.public_key_pem!, createdAt: r.created_at! }));
  }

  async put(r: WrappingKeyRecord & { createdAt: string }): Promise<void> {
    await this.q.run('INSERT INTO wrapping_keys (region, cka_id, public_key_pem, created_at) VALUES (?, ?, ?, ?)', [r.region, r.ckaId, r.publicKeyPem, r.createdAt]);
  }

  async drop(region: string, ckaId: string, onlyReservation: boolean): Promise<void> {
    await this.q.run(`DELETE FROM wrapping_keys WHERE region = ? AND cka_id = ?${onlyReservation ? " AND public_key_pem = ''" : ''}`, [region, ckaId]);
  }
}
