import type { ImportTokenRecord, ImportTokensRepository } from '../store.js';
import type { Row, SqlExecutor } from './sql.js';

function fromRow(r: Row): ImportTokenRecord {
  return {
    tokenSha256: String(r.token_sha256),
    region: String(r.region),
    organisation: String(r.organisation),
    project: String(r.project),
    keyType: String(r.key_type),
    wrappingAlgorithm: String(r.wrapping_algorithm),
    ckaId: String(r.cka_id),
    expiresAt: String(r.expires_at),
    usedAt: r.used_at == null ? null : String(r.used_at),
    createdAt: String(r.created_at),
  };
}

/** Single-use BYOK import tokens (table import_tokens): digests only. */
export class SqlImportTokensRepository implements ImportTokensRepository {
  constructor(private readonly q: SqlExecutor) {}

  async insert(t: ImportTokenRecord): Promise<void> {
    await this.q.run(
      `INSERT INTO import_tokens (token_sha256, region, organisation, project, key_type, wrapping_algorithm, cka_id, expires_at, used_at, created_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [t.tokenSha256, t.region, t.organisation, t.project, t.keyType, t.wrappingAlgorithm, t.ckaId, t.expiresAt, t.usedAt, t.createdAt],
    );
  }

  async byDigest(tokenSha256: string): Promise<ImportTokenRecord | undefined> {
    const r = await this.q.get('SELECT * FROM import_tokens WHERE token_sha256 = ?', [tokenSha256]);
    return r && fromRow(r);
  }

  async byCkaId(ckaId: string): Promise<ImportTokenRecord | undefined> {
    const r = await this.q.get('SELECT * FROM import_tokens WHERE cka_id = ?', [ckaId]);
    return r && fromRow(r);
  }

  async openCount(organisation: string, nowIso: string): Promise<{ open: number; firstExpiry: string | null }> {
    if (this.q.dialect === 'postgres' && this.q.inTransaction) await this.q.get('SELECT pg_advisory_xact_lock(hashtext(?))', [`import-tokens:${organisation}`]);
    const row = await this.q.get<{ open: number | string; first_expiry: string | null }>(
      'SELECT COUNT(*) AS open, MIN(expires_at) AS first_expiry FROM import_tokens WHERE organisation = ? AND used_at IS NULL AND expires_at > ?',
      [organisation, nowIso],
    );
    return { open: Number(row?.open ?? 0), firstExpiry: row?.first_expiry ?? null };
  }

  async consume(tokenSha256: string, nowIso: string): Promise<boolean> {
    // One statement: a concurrent consumer blocks on the row and then finds used_at set.
    const r = await this.q.run('UPDATE import_tokens SET used_at = ? WHERE token_sha256 = ? AND used_at IS NULL', [nowIso, tokenSha256]);
    return r.changes === 1;
  }

  async markUsed(tokenSha256: string, nowIso: string): Promise<void> {
    await this.q.run('UPDATE import_tokens SET used_at = COALESCE(used_at, ?) WHERE token_sha256 = ?', [nowIso, tokenSha256]);
  }

  async all(): Promise<ImportTokenRecord[]> {
    return (await this.q.all('SELECT * FROM import_tokens ORDER BY created_at')).map(fromRow);
  }

  async expiredUnused(nowIso: string): Promise<ImportTokenRecord[]> {
    return (await this.q.all('SELECT * FROM import_tokens WHERE used_at IS NULL AND expires_at <= ?', [nowIso])).map(fromRow);
  }
}
