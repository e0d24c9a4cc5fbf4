import type { KeyRecord, KeyVersion } from '../../keys/model.js';
import type { KeyPatch, KeysRepository } from '../store.js';
import type { Row, SqlExecutor } from './sql.js';

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
/** Keys per page of the start-up load (see loadAll). */
const LOAD_PAGE = 1000;

const COLUMN_OF = new Map(COLUMNS.map(([f, c, t]) => [f, { c, t }]));

function toColumn(field: keyof KeyRecord, value: unknown): unknown {
  const t = COLUMN_OF.get(field)!.t;
  if (value === null || value === undefined) return null;
  if (t === 'bool') return value ? 1 : 0;
  if (t === 'json') return JSON.stringify(value);
  return value;
}

/**
 * Repeated short texts (organisation, region, status, …) of a bulk load as one string each: the
 * driver returns a new string per row, 10,000 keys would hold 10,000 copies of each.
 */
type Intern = (v: unknown) => unknown;
const asIs: Intern = (v) => v;
function interner(): Intern {
  const seen = new Map<string, string>();
  return (v) => {
    if (typeof v !== 'string') return v;
    const known = seen.get(v);
    if (known !== undefined) return known;
    seen.set(v, v);
    return v;
  };
}

const bool = (v: unknown): boolean => Number(v) === 1;
const int = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));
const json = (v: unknown): Record<string, string> => JSON.parse(String(v)) as Record<string, string>;

/**
 * One object literal with every field (the same hidden class for every key): filled field by
 * field with computed names, V8 turned each record into a dictionary (~1.7 KB per key, and
 * slower property reads on the request path).
 */
function rowToKey(row: Row, versions: KeyVersion[], i: Intern = asIs): KeyRecord {
  return {
    identity: row.identity as string,
    organisation: i(row.organisation) as string,
    region: i(row.region) as string,
    project: i(row.project) as string,
    name: row.name as string,
    slug: row.slug as string,
    description: i(row.description) as string,
    labels: json(row.labels),
    annotations: json(row.annotations),
    keyType: i(row.key_type) as KeyRecord['keyType'],
    status: i(row.status) as KeyRecord['status'],
    statusBeforeDeletion: i(row.status_before_deletion ?? null) as KeyRecord['statusBeforeDeletion'],
    exportAllowed: bool(row.export_allowed),
    imported: bool(row.imported),
    allowRotation: bool(row.allow_rotation),
    isDefault: bool(row.is_default),
    rotationEnabled: bool(row.rotation_enabled),
    rotationPeriodDays: int(row.rotation_period_days),
    lastRotationAt: (row.last_rotation_at ?? null) as string | null,
    nextRotationAt: (row.next_rotation_at ?? null) as string | null,
    manualRotations: int(row.manual_rotations)!,
    latestVersion: int(row.latest_version)!,
    minDecryptionVersion: int(row.min_decryption_version)!,
    deletionAt: (row.deletion_at ?? null) as string | null,
    objectVersion: int(row.object_version)!,
    createdAt: row.created_at as string,
    updatedAt: row.updated_at as string,
    versions,
  };
}

function rowToVersion(r: Row, i: Intern = asIs): KeyVersion {
  return {
    version: Number(r.version),
    ckaId: String(r.cka_id),
    status: i(r.status) as KeyVersion['status'],
    origin: i(r.origin) as KeyVersion['origin'],
    createdAt: String(r.created_at),
  };
}

/** Keys and their versions (tables keys, key_versions), on either backend. */
export class SqlKeysRepository implements KeysRepository {
  constructor(private readonly q: SqlExecutor) {}

  /**
   * Every key with its versions, read in pages of LOAD_PAGE keys (by identity): a page's rows
   * are garbage before the next is read, so a large table's driver rows (~2 KB each) die young
   * instead of growing the old heap for good (RSS after a cold start).
   */
  async loadAll(): Promise<KeyRecord[]> {
    const out: KeyRecord[] = [];
    const intern = interner();
    let after = '';
    for (;;) {
      const rows = await this.q.all('SELECT * FROM keys WHERE identity > ? ORDER BY identity LIMIT ?', [after, LOAD_PAGE]);
      if (!rows.length) break;
      const last = String(rows[rows.length - 1]!.identity);
      const versions = await this.q.all('SELECT * FROM key_versions WHERE key_identity > ? AND key_identity <= ? ORDER BY key_identity, version', [after, last]);
      const byKey = new Map<string, KeyVersion[]>();
      for (const v of versions) {
        const id = String(v.key_identity);
        let list = byKey.get(id);
        if (!list) byKey.set(id, (list = []));
        list.push(rowToVersion(v, intern));
      }
      for (const r of rows) out.push(rowToKey(r, byKey.get(String(r.identity)) ?? [], intern));
      if (rows.length < LOAD_PAGE) break;
      after = last;
    }
    return out;
  }

  async load(identity: string): Promise<KeyRecord | undefined> {
    // PostgreSQL (read committed): lock the row so a compare-and-set reads the latest commit and
    // concurrent writers of one key queue here instead of failing on the version primary key.
    // SQLite's write transaction already holds the database write lock.
    const lock = this.q.inTransaction && this.q.dialect === 'postgres' ? ' FOR UPDATE' : '';
    const row = await this.q.get(`SELECT * FROM keys WHERE identity = ?${lock}`, [identity]);
    if (!row) return undefined;
    const versions = await this.q.all('SELECT * FROM key_versions WHERE key_identity = ? ORDER BY version', [identity]);
    return rowToKey(row, versions.map((v) => rowToVersion(v)));
  }

  async insert(key: KeyRecord): Promise<void> {
    const cols = COLUMNS.map(([, c]) => c);
    await this.q.run(
      `INSERT INTO keys (${cols.join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`,
      COLUMNS.map(([f]) => toColumn(f, key[f])),
    );
    for (const v of key.versions) await this.insertVersion(key.identity, v);
    await this.changed(key.identity);
  }

  async insertVersion(identity: string, v: KeyVersion): Promise<void> {
    await this.q.run('INSERT INTO key_versions (key_identity, version, cka_id, status, origin, created_at) VALUES (?, ?, ?, ?, ?, ?)', [
      identity,
      v.version,
      v.ckaId,
      v.status,
      v.origin,
      v.createdAt,
    ]);
  }

  async update(identity: string, expectObjectVersion: number, patch: KeyPatch): Promise<boolean> {
    const fields = Object.keys(patch) as (keyof KeyPatch)[];
    const sets = fields.map((f) => `${COLUMN_OF.get(f)!.c} = ?`);
    const res = await this.q.run(
      `UPDATE keys SET ${[...sets, 'object_version = object_version + 1'].join(', ')} WHERE identity = ? AND object_version = ?`,
      [...fields.map((f) => toColumn(f, patch[f])), identity, expectObjectVersion],
    );
    if (res.changes === 1) await this.changed(identity);
    return res.changes === 1;
  }

  async delete(identity: string): Promise<void> {
    await this.q.run('DELETE FROM key_versions WHERE key_identity = ?', [identity]);
    await this.q.run('DELETE FROM keys WHERE identity = ?', [identity]);
    await this.changed(identity);
  }

  private async changed(identity: string): Promise<void> {
    await this.q.run('INSERT INTO key_changes (key_identity) VALUES (?)', [identity]);
  }

  async dueForDestruction(nowIso: string): Promise<string[]> {
    const rows = await this.q.all<{ identity: string }>(`SELECT identity FROM keys WHERE status = 'pending_deletion' AND deletion_at <= ?`, [nowIso]);
    return rows.map((r) => r.identity);
  }

  async allCkaIds(): Promise<Set<string>> {
    const rows = await this.q.all<{ cka_id: string }>('SELECT cka_id FROM key_versions');
    return new Set(rows.map((r) => r.cka_id));
  }

  async claimDue(nowIso: string, nowMs: number, owner: string, untilMs: number, limit: number): Promise<string[]> {
    const rows = await this.q.all<{ identity: string }>(
      `SELECT identity FROM keys WHERE rotation_enabled = 1 AND status = 'active' AND next_rotation_at <= ?
         AND claim_until_ms < ? ORDER BY next_rotation_at LIMIT ?`,
      [nowIso, nowMs, limit],
    );
    const claimed: string[] = [];
    // The guard is repeated in the UPDATE: on PostgreSQL another node may claim in between.
    for (const r of rows) {
      const res = await this.q.run('UPDATE keys SET claim_owner = ?, claim_until_ms = ? WHERE identity = ? AND claim_until_ms < ?', [
        owner,
        untilMs,
        r.identity,
        nowMs,
      ]);
      if (res.changes === 1) claimed.push(r.identity);
    }
    return claimed;
  }

  async releaseClaim(identity: string, owner: string, untilMs: number): Promise<void> {
    await this.q.run('UPDATE keys SET claim_owner = NULL, claim_until_ms = ? WHERE identity = ? AND claim_owner = ?', [untilMs, identity, owner]);
  }

  async clearClaim(identity: string): Promise<void> {
    await this.q.run('UPDATE keys SET claim_owner = NULL, claim_until_ms = 0 WHERE identity = ?', [identity]);
  }
}
