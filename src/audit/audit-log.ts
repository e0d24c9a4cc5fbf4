import { createHash } from 'node:crypto';
import type { Clock } from '../clock.js';
import type { Database } from '../store/database.js';

export type AuditOutcome = 'success' | 'denied' | 'failure';

export interface AuditEvent {
  action: string;
  outcome: AuditOutcome;
  region?: string | null;
  keyIdentity?: string | null;
  keyVersion?: string | null;
  principal?: string | null;
  organisation?: string | null;
  requestId?: string | null;
  /** Extra context: error code, XKS request metadata. Never plaintext, material or tokens. */
  detail?: Record<string, unknown> | null;
}

export interface StoredAuditEvent extends AuditEvent {
  seq: number;
  time: string;
}

const GENESIS = '0'.repeat(64);
/** The testing clock's moves: daemon-wide, so every organisation's listing shows them. */
export const CLOCK_ACTION = 'kms.testing.clock';
/**
 * No record is larger (contract: "Fairness and bounded storage"). Sources keep records small by
 * recording only validated fields; boundAuditEvent is the last line of defence.
 */
export const MAX_AUDIT_RECORD_BYTES = 2048;
/** Any one text column of a record, at most (a region, key id, principal…; all validated far below this). */
const MAX_AUDIT_FIELD_BYTES = 200;
const TEXT_FIELDS = ['action', 'region', 'keyIdentity', 'keyVersion', 'principal', 'organisation', 'requestId'] as const;
/** 13 columns × 1000 rows = 13,000 bound parameters, below SQLite's 32,766. */
const MAX_BATCH = 1000;

/** The stored columns of a record, in table order, up to (not including) prev_hash and hash. */
function contentColumns(e: StoredAuditEvent): unknown[] {
  return [
    e.seq,
    e.time,
    e.action,
    e.outcome,
    e.region ?? null,
    e.keyIdentity ?? null,
    e.keyVersion ?? null,
    e.principal ?? null,
    e.organisation ?? null,
    e.requestId ?? null,
    e.detail ? JSON.stringify(e.detail) : null,
  ];
}

/** The hashed content of one record: every column but the hash itself, in a fixed order. */
function recordHash(e: StoredAuditEvent, prevHash: string): string {
  return createHash('sha256')
    .update(JSON.stringify([...contentColumns(e), prevHash]))
    .digest('hex');
}

/** The stored size of a record's content in bytes (UTF-8 text of every column, detail as JSON). */
export function auditRecordBytes(e: StoredAuditEventDraft): number {
  let n = Buffer.byteLength(e.time) + Buffer.byteLength(e.outcome);
  for (const f of TEXT_FIELDS) if (e[f]) n += Buffer.byteLength(e[f]);
  if (e.detail) n += Buffer.byteLength(JSON.stringify(e.detail));
  return n;
}

/** `s` cut to at most `max` UTF-8 bytes (never inside a character). */
function cutBytes(s: string, max: number): string {
  if (Buffer.byteLength(s) <= max) return s;
  let out = s.slice(0, max);
  while (Buffer.byteLength(out) > max) out = out.slice(0, -1);
  return out;
}

/**
 * A record within MAX_AUDIT_RECORD_BYTES: text columns cut to MAX_AUDIT_FIELD_BYTES, then
 * `detail` entries kept in order while they fit (the rest dropped, `truncated: true` added).
 * Records of the sources' own making never get here oversized; this bounds any future mistake.
 */
export function boundAuditEvent(e: StoredAuditEventDraft): StoredAuditEventDraft {
  // Fast path (every request): each character is at most 3 UTF-8 bytes (a surrogate pair, 2 chars, is 4).
  let chars = e.time.length + e.outcome.length;
  for (const f of TEXT_FIELDS) chars += e[f]?.length ?? 0;
  const detailJson = e.detail ? JSON.stringify(e.detail) : '';
  if ((chars + detailJson.length) * 3 <= MAX_AUDIT_RECORD_BYTES || auditRecordBytes(e) <= MAX_AUDIT_RECORD_BYTES) return e;
  const out: StoredAuditEventDraft = { ...e, detail: null };
  for (const f of TEXT_FIELDS) {
    const v = out[f];
    if (v) out[f] = cutBytes(v, MAX_AUDIT_FIELD_BYTES);
  }
  if (e.detail) {
    const kept: Record<string, unknown> = { truncated: true };
    out.detail = kept;
    for (const [k, v] of Object.entries(e.detail)) {
      kept[k] = v;
      if (auditRecordBytes(out) > MAX_AUDIT_RECORD_BYTES) delete kept[k];
    }
  }
  return out;
}

interface Pending {
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** Where committed batches go: the writer thread in the daemon, or in-process (CLI, tests). */
export interface AuditSink {
  /** true when the sink queues and coalesces batches itself, so callers need not wait in line. */
  readonly pipelined: boolean;
  /** Why the sink cannot write any more (its writer thread died), if so. */
  readonly broken?: string;
  append(events: StoredAuditEventDraft[]): Promise<void>;
  close(): Promise<void>;
}

/** An event stamped with the daemon clock at the moment it was recorded; seq and hashes come at commit. */
export type StoredAuditEventDraft = AuditEvent & { time: string };

/**
 * Appends batches to the one hash chain of the data dir with ONE guarded INSERT each: it only
 * writes if the chain's head is still the one the batch was hashed against (atomic in SQLite: a
 * stale snapshot cannot take the write lock). If another process appended meanwhile, nothing is
 * written and the batch is re-chained on the new head.
 */
export class AuditChainWriter implements AuditSink {
  readonly pipelined = false;
  /** Last committed link of the chain as this writer last saw it (another process may have moved on). */
  private head?: { seq: number; hash: string };

  constructor(private readonly db: Database) {}

  private async readHead(): Promise<{ seq: number; hash: string }> {
    const last = await this.db.get<{ seq: number; hash: string }>('SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1');
    return last ?? { seq: 0, hash: GENESIS };
  }

  async append(events: StoredAuditEventDraft[]): Promise<void> {
    for (let attempt = 0; attempt < 50; attempt++) {
      const head = this.head ?? (await this.readHead());
      let seq = head.seq;
      let prev = head.hash;
      const params: unknown[] = [];
      for (const e of events) {
        const stored: StoredAuditEvent = { ...e, seq: ++seq };
        const hash = recordHash(stored, prev);
        params.push(...contentColumns(stored), prev, hash);
        prev = hash;
      }
      const values = events.map(() => '(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)').join(', ');
      const res = await this.db.writeStatement(
        `INSERT INTO audit_events (seq, time, action, outcome, region, key_identity, key_version, principal, organisation, request_id, detail, prev_hash, hash)
         SELECT * FROM (VALUES ${values})
         WHERE COALESCE((SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1), ?) = ?`,
        [...params, GENESIS, head.hash],
      );
      if (res.changes === events.length) {
        this.head = { seq, hash: prev };
        return;
      }
      this.head = undefined;
    }
    throw new Error('audit: could not extend the hash chain (contention)');
  }

  async close(): Promise<void> {}
}

/**
 * Tamper-evident audit trail with group commit: records arriving while a commit is in flight
 * are written together in the next one, and each caller's promise settles only once its record
 * is durably committed. In the daemon the commits run in a writer thread (audit/writer-thread.ts)
 * so that a commit never waits for the HTTP work queued on the main event loop.
 */
export class AuditLog {
  private queue: { event: StoredAuditEventDraft; pending: Pending }[] = [];
  private flushing = false;
  committed = 0;
  /** The error of the last commit, until a later commit succeeds: /readyz reports it. */
  private lastFailure?: string;

  constructor(
    private readonly db: Database,
    private readonly clock: Clock,
    private readonly onBatch: (n: number, seconds: number) => void = () => {},
    private readonly sink: AuditSink = new AuditChainWriter(db),
  ) {}

  record(event: AuditEvent): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ event: boundAuditEvent({ ...event, time: this.clock.nowIso() }), pending: { resolve, reject } });
      if (!this.flushing) {
        this.flushing = true;
        setImmediate(() => void this.flush());
      }
    });
  }

  private async flush(): Promise<void> {
    while (this.queue.length) {
      const batch = this.queue.splice(0, MAX_BATCH);
      const started = performance.now();
      const done = this.sink.append(batch.map((b) => b.event)).then(
        () => {
          this.lastFailure = undefined;
          this.committed += batch.length;
          this.onBatch(batch.length, (performance.now() - started) / 1000);
          for (const b of batch) b.pending.resolve();
        },
        (e) => {
          this.lastFailure = String((e as Error)?.message ?? e);
          for (const b of batch) b.pending.reject(e);
        },
      );
      if (!this.sink.pipelined) await done;
    }
    this.flushing = false;
  }

  /**
   * Why records cannot be written now (the last commit failed and none succeeded since, or the
   * writer is gone), else undefined. Cheap: /readyz asks on every probe.
   */
  unwritable(): string | undefined {
    return this.sink.broken ?? this.lastFailure;
  }

  close(): Promise<void> {
    return this.sink.close();
  }

  /** Recomputes the whole chain; an edited, inserted or deleted row makes it invalid. */
  async verify(): Promise<{ valid: boolean; events: number; brokenAt?: number }> {
    let prev = GENESIS;
    let expectSeq = 1;
    let count = 0;
    for (;;) {
      const rows = await this.db.all<Record<string, unknown>>(
        'SELECT * FROM audit_events WHERE seq >= ? ORDER BY seq LIMIT 5000',
        [expectSeq],
      );
      if (!rows.length) break;
      for (const r of rows) {
        const e = fromRow(r);
        if (e.seq !== expectSeq || r.prev_hash !== prev || recordHash(e, prev) !== r.hash)
          return { valid: false, events: count, brokenAt: e.seq };
        prev = String(r.hash);
        expectSeq++;
        count++;
      }
    }
    return { valid: true, events: count };
  }

  async query(f: {
    organisation: string;
    region?: string;
    keyIdentity?: string;
    action?: string;
    since?: string;
    limit: number;
  }): Promise<StoredAuditEvent[]> {
    // The organisation's records in the region, and the testing clock's successful moves: they
    // have no organisation or region and move every organisation's schedules, so every listing shows them.
    const own = f.region ? 'organisation = ? AND region = ?' : 'organisation = ?';
    const where = [`((${own}) OR (organisation IS NULL AND action = '${CLOCK_ACTION}' AND outcome = 'success'))`];
    const params: unknown[] = f.region ? [f.organisation, f.region] : [f.organisation];
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
    const rows = await this.db.all<Record<string, unknown>>(
      `SELECT * FROM audit_events WHERE ${where.join(' AND ')} ORDER BY seq DESC LIMIT ?`,
      [...params, f.limit],
    );
    return rows.map(fromRow).reverse();
  }
}

function fromRow(r: Record<string, unknown>): StoredAuditEvent {
  return {
    seq: Number(r.seq),
    time: String(r.time),
    action: String(r.action),
    outcome: r.outcome as AuditOutcome,
    region: (r.region as string) ?? null,
    keyIdentity: (r.key_identity as string) ?? null,
    keyVersion: (r.key_version as string) ?? null,
    principal: (r.principal as string) ?? null,
    organisation: (r.organisation as string) ?? null,
    requestId: (r.request_id as string) ?? null,
    detail: r.detail ? (JSON.parse(String(r.detail)) as Record<string, unknown>) : null,
  };
}
