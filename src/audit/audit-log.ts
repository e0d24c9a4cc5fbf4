import { createHash } from 'node:crypto';
import type { Clock } from '../clock.js';
import type { AuditQuery, AuditRepository, AuditRow, ChainHead } from '../store/store.js';

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

/** The stored columns of a record (detail as its JSON text), without the chain links. */
function toRow(e: StoredAuditEvent): Omit<AuditRow, 'prevHash' | 'hash'> {
  return {
    seq: e.seq,
    time: e.time,
    action: e.action,
    outcome: e.outcome,
    region: e.region ?? null,
    keyIdentity: e.keyIdentity ?? null,
    keyVersion: e.keyVersion ?? null,
    principal: e.principal ?? null,
    organisation: e.organisation ?? null,
    requestId: e.requestId ?? null,
    detail: e.detail ? JSON.stringify(e.detail) : null,
  };
}

/** The hashed content of one record: every column but the hash itself, in a fixed order. */
export function recordHash(r: Omit<AuditRow, 'prevHash' | 'hash'>, prevHash: string): string {
  const columns = [r.seq, r.time, r.action, r.outcome, r.region, r.keyIdentity, r.keyVersion, r.principal, r.organisation, r.requestId, r.detail];
  return createHash('sha256')
    .update(JSON.stringify([...columns, prevHash]))
    .digest('hex');
}

/** Links `events` onto `head`: consecutive seqs, each row carrying the previous row's hash. */
export function chainRows(events: (AuditEvent & { time: string })[], head: ChainHead): AuditRow[] {
  let seq = head.seq;
  let prev = head.hash;
  return events.map((e) => {
    const content = toRow({ ...e, seq: ++seq });
    const hash = recordHash(content, prev);
    const row = { ...content, prevHash: prev, hash };
    prev = hash;
    return row;
  });
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
  /** At most this many batches handed over and not yet answered (pipelined sinks; default: no limit). */
  readonly maxInFlight?: number;
  /** Why the sink cannot write any more (its writer thread died), if so. */
  readonly broken?: string;
  append(events: StoredAuditEventDraft[]): Promise<void>;
  close(): Promise<void>;
}

/** An event stamped with the daemon clock at the moment it was recorded; seq and hashes come at commit. */
export type StoredAuditEventDraft = AuditEvent & { time: string };

/**
 * Appends batches to the store's one hash chain: the store hands over the committed head (and
 * hands it again if another writer moved it), this links the batch onto it.
 */
export class AuditChainWriter implements AuditSink {
  readonly pipelined = false;

  constructor(private readonly chain: AuditRepository) {}

  append(events: StoredAuditEventDraft[]): Promise<void> {
    return this.chain.append((head) => chainRows(events, head));
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
  /** Batches handed to the sink and not yet answered. */
  private inFlight = 0;
  private readonly maxInFlight: number;
  committed = 0;
  /** The error of the last commit, until a later commit succeeds: /readyz reports it. */
  private lastFailure?: string;

  constructor(
    private readonly chain: AuditRepository,
    private readonly clock: Clock,
    private readonly onBatch: (n: number, seconds: number) => void = () => {},
    private readonly sink: AuditSink = new AuditChainWriter(chain),
  ) {
    this.maxInFlight = sink.maxInFlight ?? Infinity;
  }

  record(event: AuditEvent): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ event: boundAuditEvent({ ...event, time: this.clock.nowIso() }), pending: { resolve, reject } });
      if (!this.flushing && this.inFlight < this.maxInFlight) {
        this.flushing = true;
        setImmediate(() => void this.flush());
      }
    });
  }

  private async flush(): Promise<void> {
    while (this.queue.length && this.inFlight < this.maxInFlight) {
      const batch = this.queue.splice(0, MAX_BATCH);
      const started = performance.now();
      this.inFlight++;
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
      void done.finally(() => {
        this.inFlight--;
        // What queued up while the limit held goes out as the next batch.
        if (this.queue.length && !this.flushing) {
          this.flushing = true;
          setImmediate(() => void this.flush());
        }
      });
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
      const rows = await this.chain.readFrom(expectSeq, 5000);
      if (!rows.length) break;
      for (const r of rows) {
        if (r.seq !== expectSeq || r.prevHash !== prev || recordHash(r, prev) !== r.hash) return { valid: false, events: count, brokenAt: r.seq };
        prev = r.hash;
        expectSeq++;
        count++;
      }
    }
    return { valid: true, events: count };
  }

  async query(f: Omit<AuditQuery, 'everyOrganisationAction'>): Promise<StoredAuditEvent[]> {
    return (await this.chain.query({ ...f, everyOrganisationAction: CLOCK_ACTION })).map(fromRow);
  }
}

function fromRow(r: AuditRow): StoredAuditEvent {
  return {
    seq: r.seq,
    time: r.time,
    action: r.action,
    outcome: r.outcome as AuditOutcome,
    region: r.region,
    keyIdentity: r.keyIdentity,
    keyVersion: r.keyVersion,
    principal: r.principal,
    organisation: r.organisation,
    requestId: r.requestId,
    detail: r.detail ? (JSON.parse(r.detail) as Record<string, unknown>) : null,
  };
}
