import type { AuditQuery, AuditRepository, AuditRow, ChainHead } from '../store.js';
import type { Row, SqlExecutor } from './sql.js';

export const AUDIT_COLUMNS =
  'seq, time, action, outcome, region, key_identity, key_version, principal, organisation, request_id, detail, prev_hash, hash';
export const GENESIS_HASH = '0'.repeat(64);

/** The 13 stored columns of a row, in AUDIT_COLUMNS order. */
export function auditParams(r: AuditRow): unknown[] {
  return [r.seq, r.time, r.action, r.outcome, r.region, r.keyIdentity, r.keyVersion, r.principal, r.organisation, r.requestId, r.detail, r.prevHash, r.hash];
}

export function auditFromRow(r: Row): AuditRow {
  const s = (v: unknown) => (v == null ? null : String(v));
  return {
    seq: Number(r.seq),
    time: String(r.time),
    action: String(r.action),
    outcome: String(r.outcome),
    region: s(r.region),
    keyIdentity: s(r.key_identity),
    keyVersion: s(r.key_version),
    principal: s(r.principal),
    organisation: s(r.organisation),
    requestId: s(r.request_id),
    detail: s(r.detail),
    prevHash: String(r.prev_hash),
    hash: String(r.hash),
  };
}

/** Reads of the audit chain (table audit_events), shared; appending is each backend's own. */
export abstract class SqlAuditReads implements AuditRepository {
  constructor(protected readonly q: SqlExecutor) {}

  abstract append(build: (head: ChainHead) => AuditRow[]): Promise<void>;

  protected async readHead(q: SqlExecutor = this.q): Promise<ChainHead> {
    const last = await q.get<{ seq: number | string; hash: string }>('SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1');
    return last ? { seq: Number(last.seq), hash: last.hash } : { seq: 0, hash: GENESIS_HASH };
  }

  async readFrom(fromSeq: number, limit: number): Promise<AuditRow[]> {
    return (await this.q.all('SELECT * FROM audit_events WHERE seq >= ? ORDER BY seq LIMIT ?', [fromSeq, limit])).map(auditFromRow);
  }

  async query(f: AuditQuery): Promise<AuditRow[]> {
    // The organisation's records (in the region, if given), plus the successful records of an
    // action that concerns every organisation (the testing clock: no organisation, no region).
    const own = f.region ? 'organisation = ? AND region = ?' : 'organisation = ?';
    const ownParams: unknown[] = f.region ? [f.organisation, f.region] : [f.organisation];
    const where = f.everyOrganisationAction
      ? [`((${own}) OR (organisation IS NULL AND action = ? AND outcome = 'success'))`]
      : [own];
    const params: unknown[] = f.everyOrganisationAction ? [...ownParams, f.everyOrganisationAction] : ownParams;
    const filters: [string, unknown][] = [
      ['key_identity = ?', f.keyIdentity],
      ['action = ?', f.action],
      ['time >= ?', f.since],
    ];
    for (const [clause, value] of filters)
      if (value) {
        where.push(clause);
        params.push(value);
      }
    const rows = await this.q.all(`SELECT * FROM audit_events WHERE ${where.join(' AND ')} ORDER BY seq DESC LIMIT ?`, [...params, f.limit]);
    return rows.map(auditFromRow).reverse();
  }

  async copyIn(rows: AuditRow[]): Promise<void> {
    for (let i = 0; i < rows.length; i += 500) {
      const chunk = rows.slice(i, i + 500);
      await this.q.run(
        `INSERT INTO audit_events (${AUDIT_COLUMNS}) VALUES ${chunk.map(() => '(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)').join(', ')}`,
        chunk.flatMap(auditParams),
      );
    }
  }

  async count(): Promise<number> {
    return Number((await this.q.get<{ n: number | string }>('SELECT COUNT(*) AS n FROM audit_events'))?.n ?? 0);
  }
}
