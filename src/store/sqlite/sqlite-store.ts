import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sqlite3 from 'sqlite3';

export type Row = Record<string, unknown>;
export type Params = unknown[];

/** The part of a connection a transaction body may use. */
export interface Tx {
  get<T = Row>(sql: string, params?: Params): Promise<T | undefined>;
  all<T = Row>(sql: string, params?: Params): Promise<T[]>;
  run(sql: string, params?: Params): Promise<{ changes: number; lastID: number }>;
}

class Connection implements Tx {
  private constructor(readonly db: sqlite3.Database) {}

  static async open(file: string): Promise<Connection> {
    const db = await new Promise<sqlite3.Database>((resolve, reject) => {
      const d = new sqlite3.Database(file, (err) => (err ? reject(err) : resolve(d)));
    });
    const c = new Connection(db);
    db.configure('busyTimeout', 10000);
    await c.run('PRAGMA journal_mode = WAL');
    // FULL: a response that says "done" (and its audit record) survives power loss too.
    await c.run('PRAGMA synchronous = FULL');
    await c.run('PRAGMA foreign_keys = ON');
    return c;
  }

  get<T = Row>(sql: string, params: Params = []): Promise<T | undefined> {
    return new Promise((resolve, reject) => this.db.get(sql, params, (err, row) => (err ? reject(err) : resolve(row as T))));
  }
  all<T = Row>(sql: string, params: Params = []): Promise<T[]> {
    return new Promise((resolve, reject) => this.db.all(sql, params, (err, rows) => (err ? reject(err) : resolve(rows as T[]))));
  }
  run(sql: string, params: Params = []): Promise<{ changes: number; lastID: number }> {
    return new Promise((resolve, reject) =>
      this.db.run(sql, params, function (err) {
        if (err) reject(err);
        else resolve({ changes: this.changes, lastID: this.lastID });
      }),
    );
  }
  exec(sql: string): Promise<void> {
    return new Promise((resolve, reject) => this.db.exec(sql, (err) => (err ? reject(err) : resolve())));
  }
  close(): Promise<void> {
    return new Promise((resolve) => this.db.close(() => resolve()));
  }
}

const MIGRATIONS_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations');

/**
 * SQLite metadata store: one connection for writes (transactions serialised in-process,
 * BEGIN IMMEDIATE across processes) and one for reads, so a reader never sees another
 * request's uncommitted transaction. WAL mode lets them run side by side.
 */
export class Database {
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly writer: Connection,
    private readonly reader: Connection,
    readonly file: string,
  ) {}

  static async open(dataDir: string): Promise<Database> {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const file = path.join(dataDir, 'kmsd.sqlite');
    const writer = await Connection.open(file);
    const db = new Database(writer, await Connection.open(file), file);
    await db.migrate();
    return db;
  }

  /** Applies migrations/NNN-*.sql not yet recorded; each in its own transaction, so re-running is safe. */
  async migrate(): Promise<number> {
    let applied = 0;
    await this.writer.run(
      'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)',
    );
    const files = readdirSync(sourceMigrationsDir())
      .filter((f) => /^\d{3}-.*\.sql$/.test(f))
      .sort();
    for (const f of files) {
      const version = Number(f.slice(0, 3));
      const sql = readFileSync(path.join(sourceMigrationsDir(), f), 'utf8');
      const done = await this.transaction(async (tx) => {
        if (await tx.get('SELECT 1 FROM schema_migrations WHERE version = ?', [version])) return false;
        await this.writer.exec(sql);
        await tx.run('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)', [
          version,
          f,
          new Date().toISOString(),
        ]);
        return true;
      });
      if (done) applied++;
    }
    return applied;
  }

  get<T = Row>(sql: string, params?: Params): Promise<T | undefined> {
    return this.reader.get<T>(sql, params);
  }
  all<T = Row>(sql: string, params?: Params): Promise<T[]> {
    return this.reader.all<T>(sql, params);
  }

  /**
   * One self-contained write statement (atomic on its own, autocommit), queued with the
   * transactions so it never lands inside someone else's. One thread-pool hop instead of the
   * four of BEGIN…COMMIT: the audit trail's group commit is built on it.
   */
  writeStatement(sql: string, params: Params): Promise<{ changes: number; lastID: number }> {
    const run = async () => {
      for (let attempt = 0; ; attempt++) {
        try {
          return await this.writer.run(sql, params);
        } catch (e) {
          if (!isBusy(e) || attempt >= 50) throw e;
          await new Promise((r) => setTimeout(r, 5 + Math.random() * 20));
        }
      }
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => {});
    return result;
  }

  /** Runs `fn` in one write transaction (BEGIN IMMEDIATE), retrying if another process holds the lock. */
  transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    const run = async (): Promise<T> => {
      for (let attempt = 0; ; attempt++) {
        try {
          await this.writer.run('BEGIN IMMEDIATE');
        } catch (e) {
          if (isBusy(e) && attempt < 50) {
            await new Promise((r) => setTimeout(r, 20 + Math.random() * 50));
            continue;
          }
          throw e;
        }
        try {
          const out = await fn(this.writer);
          await this.writer.run('COMMIT');
          return out;
        } catch (e) {
          await this.writer.run('ROLLBACK').catch(() => {});
          throw e;
        }
      }
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => {});
    return result;
  }

  async close(): Promise<void> {
    await this.queue;
    await this.reader.close();
    await this.writer.close();
  }
}

function isBusy(e: unknown): boolean {
  return typeof e === 'object' && e !== null && ['SQLITE_BUSY', 'SQLITE_LOCKED'].includes((e as { code?: string }).code ?? '');
}

export function isUniqueViolation(e: unknown): boolean {
  return typeof e === 'object' && e !== null && /UNIQUE constraint failed/.test(String((e as Error).message));
}

/** Migrations are shipped as .sql next to the TypeScript sources (not copied into dist/). */
function sourceMigrationsDir(): string {
  const compiled = MIGRATIONS_DIR;
  // dist/src/store/migrations → src/store/migrations
  const fromDist = compiled.replace(`${path.sep}dist${path.sep}src${path.sep}`, `${path.sep}src${path.sep}`);
  try {
    readdirSync(fromDist);
    return fromDist;
  } catch {
    return compiled;
  }
}
