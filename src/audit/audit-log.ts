import { createHash } from 'node:crypto';
import type { Clock } from '../clock.js';
import type { AuditRepository, AuditRow, ChainHead } from '../store/store.js';

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

interface Pending {
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** Where committed batches go: the writer thread in the daemon, or in-process (CLI, tests). */
export interface AuditSink {
  /** true when the sink queues and coalesces batches itself, so callers need not wait in line. */
  readonly pipelined: boolean;
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
  committed = 0;

  constructor(
    private readonly chain: AuditRepository,
    private readonly clock: Clock,
    private readonly onBatch: (n: number, seconds: number) => void = () => {},
    private readonly sink: AuditSink = new AuditChainWriter(chain),
  ) {}

  record(event: AuditEvent): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ event: { ...event, time: this.clock.nowIso() }, pending: { resolve, reject } });
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
          this.committed += batch.length;
          this.onBatch(batch.length, (performance.now() - started) / 1000);
          for (const b of batch) b.pending.resolve();
        },
        (e) => {
          for (const b of batch) b.pending.reject(e);
        },
      );
      if (!this.sink.pipelined) await done;
    }
    this.flushing = false;
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

  async query(f: {
    organisation: string;
    region?: string;
    keyIdentity?: string;
    action?: string;
    since?: string;
    limit: number;
  }): Promise<StoredAuditEvent[]> {
    return (await this.chain.query(f)).map(fromRow);
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
