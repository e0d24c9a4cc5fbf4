import type { AwsAliasRow, AwsKeyRow, AwsKeyState, AwsScope, AwsStatements, AwsTag } from '../store.js';
import type { Row, SqlExecutor } from './sql.js';

function toKeyRow(r: Row): AwsKeyRow {
  return {
    identity: String(r.identity),
    organisation: String(r.organisation),
    region: String(r.region),
    project: String(r.project),
    keySpec: String(r.key_spec),
    keyUsage: String(r.key_usage),
    origin: r.origin as AwsKeyRow['origin'],
    description: String(r.description),
    state: r.state as AwsKeyState,
    deletionAt: r.deletion_at == null ? null : String(r.deletion_at),
    createdAt: String(r.created_at),
  };
}

function toAliasRow(r: Row): AwsAliasRow {
  return {
    organisation: String(r.organisation),
    region: String(r.region),
    project: String(r.project),
    aliasName: String(r.alias_name),
    keyIdentity: String(r.key_identity),
    createdAt: String(r.created_at),
    updatedAt: String(r.updated_at),
  };
}

/**
 * The AWS API's own metadata (migration 002-aws.sql, both backends): per-key AWS attributes,
 * aliases and AWS tags. One statement per method; the ones that must go together (a key's rows,
 * a tag set and its limit) are run in one store transaction by AwsRepository.
 */
export class SqlAwsStatements implements AwsStatements {
  constructor(private readonly q: SqlExecutor) {}

  async insertKey(row: AwsKeyRow): Promise<void> {
    await this.q.run(
      `INSERT INTO aws_keys (identity, organisation, region, project, key_spec, key_usage, origin, description, state, deletion_at, created_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [row.identity, row.organisation, row.region, row.project, row.keySpec, row.keyUsage, row.origin, row.description, row.state, row.deletionAt, row.createdAt],
    );
  }

  async key(identity: string): Promise<AwsKeyRow | undefined> {
    const r = await this.q.get('SELECT * FROM aws_keys WHERE identity = ?', [identity]);
    return r ? toKeyRow(r) : undefined;
  }

  async keysWithoutMaterial(scope: AwsScope): Promise<AwsKeyRow[]> {
    const rows = await this.q.all(
      `SELECT * FROM aws_keys WHERE organisation = ? AND region = ? AND project = ? AND state <> 'Created' ORDER BY created_at, identity`,
      [scope.organisation, scope.region, scope.project],
    );
    return rows.map(toKeyRow);
  }

  async setKeyState(identity: string, from: AwsKeyState, to: AwsKeyState, deletionAt: string | null): Promise<boolean> {
    const r = await this.q.run('UPDATE aws_keys SET state = ?, deletion_at = ? WHERE identity = ? AND state = ?', [to, deletionAt, identity, from]);
    return r.changes === 1;
  }

  async deleteKey(identity: string): Promise<void> {
    await this.q.run('DELETE FROM aws_aliases WHERE key_identity = ?', [identity]);
    await this.q.run('DELETE FROM aws_tags WHERE key_identity = ?', [identity]);
    await this.q.run('DELETE FROM aws_keys WHERE identity = ?', [identity]);
  }

  async alias(scope: AwsScope, aliasName: string): Promise<AwsAliasRow | undefined> {
    const r = await this.q.get('SELECT * FROM aws_aliases WHERE organisation = ? AND region = ? AND project = ? AND alias_name = ?', [
      scope.organisation,
      scope.region,
      scope.project,
      aliasName,
    ]);
    return r ? toAliasRow(r) : undefined;
  }

  async aliases(scope: AwsScope, keyIdentity?: string): Promise<AwsAliasRow[]> {
    const rows = keyIdentity
      ? await this.q.all('SELECT * FROM aws_aliases WHERE organisation = ? AND region = ? AND project = ? AND key_identity = ? ORDER BY alias_name', [
          scope.organisation,
          scope.region,
          scope.project,
          keyIdentity,
        ])
      : await this.q.all('SELECT * FROM aws_aliases WHERE organisation = ? AND region = ? AND project = ? ORDER BY alias_name', [
          scope.organisation,
          scope.region,
          scope.project,
        ]);
    return rows.map(toAliasRow);
  }

  async createAlias(scope: AwsScope, aliasName: string, keyIdentity: string, nowIso: string): Promise<boolean> {
    const r = await this.q.run(
      `INSERT INTO aws_aliases (organisation, region, project, alias_name, key_identity, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (organisation, region, project, alias_name) DO NOTHING`,
      [scope.organisation, scope.region, scope.project, aliasName, keyIdentity, nowIso, nowIso],
    );
    return r.changes === 1;
  }

  async updateAlias(scope: AwsScope, aliasName: string, keyIdentity: string, nowIso: string): Promise<boolean> {
    const r = await this.q.run(
      'UPDATE aws_aliases SET key_identity = ?, updated_at = ? WHERE organisation = ? AND region = ? AND project = ? AND alias_name = ?',
      [keyIdentity, nowIso, scope.organisation, scope.region, scope.project, aliasName],
    );
    return r.changes === 1;
  }

  async deleteAlias(scope: AwsScope, aliasName: string): Promise<boolean> {
    const r = await this.q.run('DELETE FROM aws_aliases WHERE organisation = ? AND region = ? AND project = ? AND alias_name = ?', [
      scope.organisation,
      scope.region,
      scope.project,
      aliasName,
    ]);
    return r.changes === 1;
  }

  async tags(keyIdentity: string): Promise<AwsTag[]> {
    const rows = await this.q.all<{ tag_key: string; tag_value: string }>('SELECT tag_key, tag_value FROM aws_tags WHERE key_identity = ? ORDER BY tag_key', [
      keyIdentity,
    ]);
    return rows.map((r) => ({ key: r.tag_key, value: r.tag_value }));
  }

  async putTags(keyIdentity: string, tags: AwsTag[]): Promise<number> {
    for (const t of tags)
      await this.q.run(
        'INSERT INTO aws_tags (key_identity, tag_key, tag_value) VALUES (?, ?, ?) ON CONFLICT (key_identity, tag_key) DO UPDATE SET tag_value = excluded.tag_value',
        [keyIdentity, t.key, t.value],
      );
    return Number((await this.q.get<{ n: number | string }>('SELECT COUNT(*) AS n FROM aws_tags WHERE key_identity = ?', [keyIdentity]))?.n ?? 0);
  }

  async removeTags(keyIdentity: string, tagKeys: string[]): Promise<void> {
    for (const k of tagKeys) await this.q.run('DELETE FROM aws_tags WHERE key_identity = ? AND tag_key = ?', [keyIdentity, k]);
  }

  async all(): Promise<{ keys: AwsKeyRow[]; aliases: AwsAliasRow[]; tags: (AwsTag & { keyIdentity: string })[] }> {
    const [keys, aliases, tags] = await Promise.all([
      this.q.all('SELECT * FROM aws_keys ORDER BY identity'),
      this.q.all('SELECT * FROM aws_aliases ORDER BY organisation, region, project, alias_name'),
      this.q.all<{ key_identity: string; tag_key: string; tag_value: string }>('SELECT * FROM aws_tags ORDER BY key_identity, tag_key'),
    ]);
    return {
      keys: keys.map(toKeyRow),
      aliases: aliases.map(toAliasRow),
      tags: tags.map((t) => ({ keyIdentity: t.key_identity, key: t.tag_key, value: t.tag_value })),
    };
  }

  async insertAlias(a: AwsAliasRow): Promise<void> {
    await this.q.run(
      'INSERT INTO aws_aliases (organisation, region, project, alias_name, key_identity, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)',
      [a.organisation, a.region, a.project, a.aliasName, a.keyIdentity, a.createdAt, a.updatedAt],
    );
  }
}
