import type { KeyRecord, KeyVersion } from '../keys/model.js';
import type { Database, Row, Tx } from './database.js';

/** Columns of `keys` as KeyRecord fields; the single place that knows the table layout. */
const COLUMNS: [keyof KeyRecord, string, 'text' | 'bool' | 'json' | 'int'][] = [
  ['identity', 'identity', 'text'],
  ['organisation', 'organisation', 'text'],
  ['region', 'region', 'text'],
  ['project', 'project', 'text'],
  ['name', 'name', 'text'],
  ['slug', 'slug', 'text'],
  ['description', 'description', 'text'],
  ['labels', 'labels', 'json'],
  ['annotations', 'annotations', 'json'],
  ['keyType', 'key_type', 'text'],
  ['status', 'status', 'text'],
  ['statusBeforeDeletion', 'status_before_deletion', 'text'],
  ['exportAllowed', 'export_allowed', 'bool'],
  ['imported', 'imported', 'bool'],
  ['allowRotation', 'allow_rotation', 'bool'],
  ['isDefault', 'is_default', 'bool'],
  ['rotationEnabled', 'rotation_enabled', 'bool'],
  ['rotationPeriodDays', 'rotation_period_days', 'int'],
  ['lastRotationAt', 'last_rotation_at', 'text'],
  ['nextRotationAt', 'next_rotation_at', 'text'],
  ['manualRotations', 'manual_rotations', 'int'],
  ['latestVersion', 'latest_version', 'int'],
  ['minDecryptionVersion', 'min_decryption_version', 'int'],
  ['deletionAt', 'deletion_at', 'text'],
  ['objectVersion', 'object_version', 'int'],
  ['createdAt', 'created_at', 'text'],
  ['updatedAt', 'updated_at', 'text'],
];
const COLUMN_OF = new Map(COLUMNS.map(([f, c, t]) => [f, { c, t }]));

function toColumn(field: keyof KeyRecord, value: unknown): unknown {
  const t = COLUMN_OF.get(field)!.t;
  if (value === null || value === undefined) return null;
  if (t === 'bool') return value ? 1 : 0;
  if (t === 'json') return JSON.stringify(value);
  return value;
}

function rowToKey(row: Row, versions: KeyVersion[]): KeyRecord {
  const k: Record<string, unknown> = { versions };
  for (const [f, c, t] of COLUMNS) {
    const v = row[c];
    k[f] = t === 'bool' ? v === 1 : t === 'json' ? JSON.parse(String(v)) : v;
  }
  return k as unknown as KeyRecord;
}

function rowToVersion(r: Row): KeyVersion {
  return {
    version: Number(r.version),
    ckaId: String(r.cka_id),
    status: r.status as KeyVersion['status'],
    origin: r.origin as KeyVersion['origin'],
    createdAt: String(r.created_at),
  };
}

export type KeyPatch = Partial<Omit<KeyRecord, 'identity' | 'versions' | 'objectVersion'>>;

export class KeysRepository {
  constructor(private readonly db: Database) {}

  async loadAll(): Promise<KeyRecord[]> {
    const [rows, versions] = await Promise.all([
      this.db.all('SELECT * FROM keys'),
      this.db.all('SELECT * FROM key_versions ORDER BY key_identity, version'),
    ]);
    const byKey = new Map<string, KeyVersion[]>();
    for (const v of versions) {
      const id = String(v.key_identity);
      let list = byKey.get(id);
      if (!list) byKey.set(id, (list = []));
      list.push(rowToVersion(v));
    }
    return rows.map((r) => rowToKey(r, byKey.get(String(r.identity)) ?? []));
  }

  async load(identity: string, tx?: Tx): Promise<KeyRecord | undefined> {
    const q = tx ?? this.db;
    const row = await q.get('SELECT * FROM keys WHERE identity = ?', [identity]);
    if (!row) return undefined;
    const versions = await q.all('SELECT * FROM key_versions WHERE key_identity = ? ORDER BY version', [identity]);
    return rowToKey(row, versions.map(rowToVersion));
  }

  async insert(tx: Tx, key: KeyRecord): Promise<void> {
    const cols = COLUMNS.map(([, c]) => c);
    await tx.run(
      `INSERT INTO keys (${cols.join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`,
      COLUMNS.map(([f]) => toColumn(f, key[f])),
    );
    for (const v of key.versions) await this.insertVersion(tx, key.identity, v);
    await this.changed(tx, key.identity);
  }

  async insertVersion(tx: Tx, identity: string, v: KeyVersion): Promise<void> {
    await tx.run('INSERT INTO key_versions (key_identity, version, cka_id, status, origin, created_at) VALUES (?, ?, ?, ?, ?, ?)', [
      identity,
      v.version,
      v.ckaId,
      v.status,
      v.origin,
      v.createdAt,
    ]);
  }

  /**
   * Applies `patch` if the row still has `expectObjectVersion` (compare-and-set); bumps
   * objectVersion. Returns false when another writer got there first.
   */
  async update(tx: Tx, identity: string, expectObjectVersion: number, patch: KeyPatch): Promise<boolean> {
    const fields = Object.keys(patch) as (keyof KeyPatch)[];
    const sets = fields.map((f) => `${COLUMN_OF.get(f)!.c} = ?`);
    const res = await tx.run(
      `UPDATE keys SET ${[...sets, 'object_version = object_version + 1'].join(', ')} WHERE identity = ? AND object_version = ?`,
      [...fields.map((f) => toColumn(f, patch[f])), identity, expectObjectVersion],
    );
    if (res.changes === 1) await this.changed(tx, identity);
    return res.changes === 1;
  }

  async delete(tx: Tx, identity: string): Promise<void> {
    await tx.run('DELETE FROM key_versions WHERE key_identity = ?', [identity]);
    await tx.run('DELETE FROM keys WHERE identity = ?', [identity]);
    await this.changed(tx, identity);
  }

  async changed(tx: Tx, identity: string): Promise<void> {
    await tx.run('INSERT INTO key_changes (key_identity) VALUES (?)', [identity]);
  }

  changesSince(seq: number): Promise<{ seq: number; key_identity: string }[]> {
    return this.db.all('SELECT seq, key_identity FROM key_changes WHERE seq > ? ORDER BY seq', [seq]);
  }

  async lastChange(): Promise<number> {
    const r = await this.db.get<{ s: number | null }>('SELECT MAX(seq) AS s FROM key_changes');
    return r?.s ?? 0;
  }

  dueForDestruction(nowIso: string): Promise<{ identity: string }[]> {
    return this.db.all(`SELECT identity FROM keys WHERE status = 'pending_deletion' AND deletion_at <= ?`, [nowIso]);
  }

  async allCkaIds(): Promise<Set<string>> {
    const rows = await this.db.all<{ cka_id: string }>('SELECT cka_id FROM key_versions');
    return new Set(rows.map((r) => r.cka_id));
  }
}

