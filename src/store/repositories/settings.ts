import type { SettingsRepository } from '../store.js';
import type { SqlExecutor } from './sql.js';

/** Cluster-wide settings (table settings): installation id, testing clock offset. */
export class SqlSettingsRepository implements SettingsRepository {
  constructor(private readonly q: SqlExecutor) {}

  async get(name: string): Promise<string | undefined> {
    return (await this.q.get<{ value: string }>('SELECT value FROM settings WHERE name = ?', [name]))?.value;
  }

  async getOrInit(name: string, value: string): Promise<string> {
    await this.q.run('INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING', [name, value]);
    return (await this.get(name))!;
  }

  async all(): Promise<Record<string, string>> {
    const rows = await this.q.all<{ name: string; value: string }>('SELECT name, value FROM settings ORDER BY name');
    return Object.fromEntries(rows.map((r) => [r.name, r.value]));
  }

  async put(name: string, value: string): Promise<void> {
    await this.q.run('INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value', [name, value]);
  }

  async addInteger(name: string, delta: number): Promise<number> {
    // One upsert: two concurrent additions both count, on either backend.
    await this.q.run(
      'INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = CAST(CAST(settings.value AS BIGINT) + ? AS TEXT)',
      [name, String(delta), delta],
    );
    return Number(await this.get(name));
  }
}
