import type { Role } from '../../config/schema.js';
import type { PrincipalsRepository, StoredPrincipal } from '../store.js';
import type { SqlExecutor } from './sql.js';

/** API principals added with kmsctl (table principals): only token digests are stored. */
export class SqlPrincipalsRepository implements PrincipalsRepository {
  constructor(private readonly q: SqlExecutor) {}

  async list(): Promise<StoredPrincipal[]> {
    const rows = await this.q.all<Record<string, string>>('SELECT * FROM principals ORDER BY name');
    return rows.map((r) => ({
      name: r.name!,
      tokenSha256: r.token_sha256!,
      organisations: JSON.parse(r.organisations!) as string[],
      roles: JSON.parse(r.roles!) as Role[],
      createdAt: r.created_at!,
    }));
  }

  async add(p: StoredPrincipal): Promise<void> {
    await this.q.run('INSERT INTO principals (name, token_sha256, organisations, roles, created_at) VALUES (?, ?, ?, ?, ?)', [
      p.name,
      p.tokenSha256,
      JSON.stringify(p.organisations),
      JSON.stringify(p.roles),
      p.createdAt,
    ]);
  }

  async remove(name: string): Promise<number> {
    return (await this.q.run('DELETE FROM principals WHERE name = ?', [name])).changes;
  }
}
