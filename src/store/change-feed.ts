import { appendFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import type { KeysRepository } from './keys-repo.js';

/**
 * Keeps several processes on one data dir coherent without an SQLite read per request.
 * Writers log every change in `key_changes` inside their transaction and, after commit,
 * append one byte to a generation file (O_APPEND: concurrent writers never lose a bump). Readers
 * compare the file's inode and size (one stat(2), ~1 µs) before trusting their in-memory view,
 * and replay `key_changes` when it moved. The file is replaced (new inode) when it grows large.
 */
const ROTATE_AT_BYTES = 1 << 20;

export class ChangeFeed {
  private lastSeen = '';
  private lastSeq = 0;
  private pulling?: Promise<void>;

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
    const st = statSync(this.genFile, { throwIfNoEntry: false });
    return st ? `${st.ino}:${st.size}` : '';
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
    appendFileSync(this.genFile, '.');
    if ((statSync(this.genFile, { throwIfNoEntry: false })?.size ?? 0) > ROTATE_AT_BYTES) {
      const tmp = `${this.genFile}.${process.pid}`;
      writeFileSync(tmp, '.');
      renameSync(tmp, this.genFile);
    }
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
