import type { AuditChainWriter, StoredAuditEventDraft } from './audit-log.js';

/** 13 columns × 1000 rows stays below SQLite's bound-parameter limit. */
const MAX_ROWS = 1000;

interface Submission {
  events: StoredAuditEventDraft[];
  done: (error?: string) => void;
}

/**
 * The single writer's inbox: whatever batches arrived while a commit was in flight are
 * coalesced into the next commit (one guarded INSERT), and each submitter hears back once its
 * rows are durable. Used by the audit writer thread of a single-process daemon and by the
 * primary of a multi-worker one.
 */
export class CommitQueue {
  private readonly inbox: Submission[] = [];
  private busy = false;

  constructor(private readonly writer: AuditChainWriter) {}

  submit(events: StoredAuditEventDraft[], done: (error?: string) => void): void {
    this.inbox.push({ events, done });
    if (!this.busy) void this.drain();
  }

  get idle(): boolean {
    return !this.busy && this.inbox.length === 0;
  }

  private async drain(): Promise<void> {
    this.busy = true;
    while (this.inbox.length) {
      const take: Submission[] = [];
      let rows = 0;
      while (this.inbox.length && rows + this.inbox[0]!.events.length <= MAX_ROWS) {
        const s = this.inbox.shift()!;
        take.push(s);
        rows += s.events.length;
      }
      if (!take.length) take.push(this.inbox.shift()!);
      let error: string | undefined;
      try {
        await this.writer.append(take.flatMap((s) => s.events));
      } catch (e) {
        error = (e as Error).message;
      }
      for (const s of take) s.done(error);
    }
    this.busy = false;
  }
}

/**
 * The submitting side of a writer in another thread or process: each append gets an id, is
 * posted, and its promise settles when the writer answers for that id.
 */
export class PendingAppends {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();

  /** Posts through `post(id)` and resolves once the writer reports the id committed. */
  add(post: (id: number) => void): Promise<void> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      post(id);
    });
  }

  settle(id: number, error?: string): void {
    const w = this.waiting.get(id);
    this.waiting.delete(id);
    if (error) w?.reject(new Error(`audit commit failed: ${error}`));
    else w?.resolve();
  }

  /** The writer is gone: every append still waiting fails. */
  failAll(e: Error): void {
    for (const w of this.waiting.values()) w.reject(e);
    this.waiting.clear();
  }

  /** The writer could not be reached for this one append. */
  fail(id: number, e: Error): void {
    this.waiting.get(id)?.reject(e);
    this.waiting.delete(id);
  }

  get size(): number {
    return this.waiting.size;
  }
}
