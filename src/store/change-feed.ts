import { readFileSync, writeFileSync } from 'node:fs';
import type { KeysRepository } from './keys-repo.js';

/**
 * Keeps several processes on one data dir coherent without an SQLite read per request.
 * Writers log every change in `key_changes` inside their transaction and, after commit,
 * rewrite a tiny generation file. Readers compare that file's content (one small read,
 * a few µs) before trusting their in-memory view, and replay `key_changes` when it moved.
 */
export class ChangeFeed {
  private lastSeen = '';
  private lastSeq = 0;
  private pulling?: Promise<void>;
  private counter = 0;

  constructor(
    private readonly genFile: string,
    private readonly repo: KeysRepository,
    private readonly apply: (identities: Set<string>) => Promise<void>,
  ) {}

  async init(): Promise<void> {
    this.lastSeq = await this.repo.lastChange();
    this.lastSeen = this.read();
  }

  private read(): string {
    try {
      return readFileSync(this.genFile, 'latin1');
    } catch {
      return '';
    }
  }

  /** Undefined when nothing changed since the last look; else a promise that settles once applied. */
  check(): Promise<void> | undefined {
    const now = this.read();
    if (now === this.lastSeen) return this.pulling;
    this.lastSeen = now;
    return this.pull();
  }

  /** Replays everything committed since the last replay (own writes included), then tells the others. */
  async publish(): Promise<void> {
    await this.pull();
    writeFileSync(this.genFile, `${process.pid}:${++this.counter}:${this.lastSeq}`);
  }

  private pull(): Promise<void> {
    const run = async () => {
      const rows = await this.repo.changesSince(this.lastSeq);
      if (!rows.length) return;
      this.lastSeq = rows[rows.length - 1]!.seq;
      await this.apply(new Set(rows.map((r) => r.key_identity)));
    };
    const p = (this.pulling ?? Promise.resolve()).then(run);
    const tracked = p.finally(() => {
      if (this.pulling === tracked) this.pulling = undefined;
    });
    this.pulling = tracked;
    return tracked;
  }
}
