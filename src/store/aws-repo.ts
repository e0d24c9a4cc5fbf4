import type { Database } from './database.js';

/** Where an AWS resource lives: kmsd's organisation, region and project ('' = organisation-scoped). */
export interface AwsScope {
  organisation: string;
  region: string;
  project: string;
}

export type AwsKeyState = 'Created' | 'PendingImport' | 'PendingDeletion';

/** The AWS attributes of one key (table aws_keys). */
export interface AwsKeyRow {
  identity: string;
  organisation: string;
  region: string;
  project: string;
  keySpec: string;
  keyUsage: string;
  origin: 'AWS_KMS' | 'EXTERNAL';
  description: string;
  state: AwsKeyState;
  deletionAt: string | null;
  createdAt: string;
}

export interface AwsAliasRow {
  aliasName: string;
  keyIdentity: string;
  createdAt: string;
  updatedAt: string;
}

export interface AwsTag {
  key: string;
  value: string;
}

function toKeyRow(r: Record<string, unknown>): AwsKeyRow {
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
    deletionAt: (r.deletion_at as string | null) ?? null,
    createdAt: String(r.created_at),
  };
}

function toAliasRow(r: Record<string, unknown>): AwsAliasRow {
  return { aliasName: String(r.alias_name), keyIdentity: String(r.key_identity), createdAt: String(r.created_at), updatedAt: String(r.updated_at) };
}

/**
 * The AWS API's own metadata (migration 002-aws.sql): per-key AWS attributes, aliases and AWS
 * tags. Every process reads it from the store, so an alias made through one daemon resolves in
 * all of them. The one place that knows these tables.
 */
export class AwsRepository {
  constructor(private readonly db: Database) {}

  // ---- keys ------------------------------------------------------------------------------------

  async insertKey(row: AwsKeyRow): Promise<void> {
    await this.db.transaction((tx) =>
      tx.run(
        `INSERT INTO aws_keys (identity, organisation, region, project, key_spec, key_usage, origin, description, state, deletion_at, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        [row.identity, row.organisation, row.region, row.project, row.keySpec, row.keyUsage, row.origin, row.description, row.state, row.deletionAt, row.createdAt],
      ),
    );
  }

  async key(identity: string): Promise<AwsKeyRow | undefined> {
    const r = await this.db.get<Record<string, unknown>>('SELECT * FROM aws_keys WHERE identity = ?', [identity]);
    return r ? toKeyRow(r) : undefined;
  }

  /** Keys that exist only on the AWS side (EXTERNAL keys without material) in a scope. */
  async keysWithoutMaterial(scope: AwsScope): Promise<AwsKeyRow[]> {
    const rows = await this.db.all<Record<string, unknown>>(
      `SELECT * FROM aws_keys WHERE organisation = ? AND region = ? AND project = ? AND state <> 'Created' ORDER BY created_at, identity`,
      [scope.organisation, scope.region, scope.project],
    );
    return rows.map(toKeyRow);
  }

  /** Compare-and-set of a key's state; false when it was not in `from` any more. */
  async setKeyState(identity: string, from: AwsKeyState, to: AwsKeyState, deletionAt: string | null): Promise<boolean> {
    const r = await this.db.transaction((tx) =>
      tx.run('UPDATE aws_keys SET state = ?, deletion_at = ? WHERE identity = ? AND state = ?', [to, deletionAt, identity, from]),
    );
    return r.changes === 1;
  }

  /** Removes a key's AWS rows (attributes, aliases, tags): an AWS-only key whose deletion window ended. */
  async deleteKey(identity: string): Promise<void> {
    await this.db.transaction(async (tx) => {
      await tx.run('DELETE FROM aws_aliases WHERE key_identity = ?', [identity]);
      await tx.run('DELETE FROM aws_tags WHERE key_identity = ?', [identity]);
      await tx.run('DELETE FROM aws_keys WHERE identity = ?', [identity]);
    });
  }

  // ---- aliases ---------------------------------------------------------------------------------

  async alias(scope: AwsScope, aliasName: string): Promise<AwsAliasRow | undefined> {
    const r = await this.db.get<Record<string, unknown>>(
      'SELECT * FROM aws_aliases WHERE organisation = ? AND region = ? AND project = ? AND alias_name = ?',
      [scope.organisation, scope.region, scope.project, aliasName],
    );
    return r ? toAliasRow(r) : undefined;
  }

  /** Every alias of the scope (or of one key), ordered by name. */
  async aliases(scope: AwsScope, keyIdentity?: string): Promise<AwsAliasRow[]> {
    const rows = keyIdentity
      ? await this.db.all<Record<string, unknown>>(
          'SELECT * FROM aws_aliases WHERE organisation = ? AND region = ? AND project = ? AND key_identity = ? ORDER BY alias_name',
          [scope.organisation, scope.region, scope.project, keyIdentity],
        )
      : await this.db.all<Record<string, unknown>>('SELECT * FROM aws_aliases WHERE organisation = ? AND region = ? AND project = ? ORDER BY alias_name', [
          scope.organisation,
          scope.region,
          scope.project,
        ]);
    return rows.map(toAliasRow);
  }

  /** False when the name is taken in the scope. */
  async createAlias(scope: AwsScope, aliasName: string, keyIdentity: string, nowIso: string): Promise<boolean> {
    const r = await this.db.transaction((tx) =>
      tx.run(
        `INSERT INTO aws_aliases (organisation, region, project, alias_name, key_identity, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (organisation, region, project, alias_name) DO NOTHING`,
        [scope.organisation, scope.region, scope.project, aliasName, keyIdentity, nowIso, nowIso],
      ),
    );
    return r.changes === 1;
  }

  /** False when no such alias exists. */
  async updateAlias(scope: AwsScope, aliasName: string, keyIdentity: string, nowIso: string): Promise<boolean> {
    const r = await this.db.transaction((tx) =>
      tx.run('UPDATE aws_aliases SET key_identity = ?, updated_at = ? WHERE organisation = ? AND region = ? AND project = ? AND alias_name = ?', [
        keyIdentity,
        nowIso,
        scope.organisation,
        scope.region,
        scope.project,
        aliasName,
      ]),
    );
    return r.changes === 1;
  }

  /** False when no such alias exists. */
  async deleteAlias(scope: AwsScope, aliasName: string): Promise<boolean> {
    const r = await this.db.transaction((tx) =>
      tx.run('DELETE FROM aws_aliases WHERE organisation = ? AND region = ? AND project = ? AND alias_name = ?', [
        scope.organisation,
        scope.region,
        scope.project,
        aliasName,
      ]),
    );
    return r.changes === 1;
  }

  // ---- tags ------------------------------------------------------------------------------------

  async tags(keyIdentity: string): Promise<AwsTag[]> {
    const rows = await this.db.all<{ tag_key: string; tag_value: string }>('SELECT tag_key, tag_value FROM aws_tags WHERE key_identity = ? ORDER BY tag_key', [
      keyIdentity,
    ]);
    return rows.map((r) => ({ key: r.tag_key, value: r.tag_value }));
  }

  /**
   * Sets tags (a key already tagged gets the new value), refusing when the key would then hold
   * more than `maxTags`: false, and nothing changed.
   */
  async putTags(keyIdentity: string, tags: AwsTag[], maxTags: number): Promise<boolean> {
    return this.db.transaction(async (tx) => {
      for (const t of tags)
        await tx.run(
          'INSERT INTO aws_tags (key_identity, tag_key, tag_value) VALUES (?, ?, ?) ON CONFLICT (key_identity, tag_key) DO UPDATE SET tag_value = excluded.tag_value',
          [keyIdentity, t.key, t.value],
        );
      const n = await tx.get<{ n: number }>('SELECT COUNT(*) AS n FROM aws_tags WHERE key_identity = ?', [keyIdentity]);
      if ((n?.n ?? 0) > maxTags) throw new TooManyTags();
      return true;
    }).catch((e) => {
      if (e instanceof TooManyTags) return false;
      throw e;
    });
  }

  async removeTags(keyIdentity: string, tagKeys: string[]): Promise<void> {
    await this.db.transaction(async (tx) => {
      for (const k of tagKeys) await tx.run('DELETE FROM aws_tags WHERE key_identity = ? AND tag_key = ?', [keyIdentity, k]);
    });
  }
}

/** Rolls putTags' transaction back. */
class TooManyTags extends Error {}
