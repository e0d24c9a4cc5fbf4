import type { ChangesRepository, ChangeSignal } from './store.js';

/**
 * Keeps several processes (or hosts) on one store coherent without a store read per request.
 * Writers log every change in the change log inside their transaction and, after commit, bump
 * the store's change signal (a generation file for SQLite, NOTIFY for PostgreSQL). Readers look
 * at the signal (cheap) before trusting their in-memory view, and replay the log when it moved.
 */
export class ChangeFeed {
  private lastSeen = '';
  private lastSeq = 0;
  private pulling?: Promise<void>;
  /** The signal was looked at in this event-loop turn (reset by the turn's setImmediate). */
  private looked = false;
  private readonly nextTurn = () => {
    this.looked = false;
  };

  constructor(
    private readonly signal: ChangeSignal,
    private readonly changes: ChangesRepository,
    private readonly apply: (identities: Set<string>) => Promise<void>,
  ) {}

  async init(): Promise<void> {
    this.lastSeq = await this.changes.last();
    this.lastSeen = this.signal.current();
  }

  /**
   * Undefined when nothing changed since the last look; else a promise that settles once applied.
   *
   * Looks at the signal at most once per event-loop turn: the requests read in one poll phase
   * (often a dozen under load) share one look, which was a stat(2) per request (~4 % of the
   * encrypt path's CPU). Coherence is kept: a request sent after another process's write
   * finished arrives on a socket that became readable after that write, so libuv reads it in a
   * later poll phase than any look taken before the write, and every turn's check phase
   * (setImmediate) clears the look. Requests start from I/O callbacks, never from a check phase.
   */
  check(): Promise<void> | undefined {
    if (this.looked) return this.pulling;
    this.looked = true;
    setImmediate(this.nextTurn);
    const now = this.signal.current();
    if (now === this.lastSeen) return this.pulling;
    this.lastSeen = now;
    return this.pull();
  }

  /** Replays everything committed since the last replay (own writes included), then tells the others. */
  async publish(): Promise<void> {
    await this.pull();
    await this.signal.bump();
  }

  close(): void {
    this.signal.close();
  }

  private pull(): Promise<void> {
    const run = async () => {
      const rows = await this.changes.since(this.lastSeq);
      if (!rows.length) return;
      this.lastSeq = rows[rows.length - 1]!.seq;
      await this.apply(new Set(rows.map((r) => r.identity)));
    };
    const p = (this.pulling ?? Promise.resolve()).then(run);
    const tracked = p.finally(() => {
      if (this.pulling === tracked) this.pulling = undefined;
    });
    this.pulling = tracked;
    return tracked;
  }
}
