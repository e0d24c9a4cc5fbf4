import { appendFileSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sqlite3 from 'sqlite3';
import { AUDIT_COLUMNS, auditParams, SqlAuditReads } from '../repositories/audit.js';
import { sourceMigrationsDir } from '../migrations-dir.js';
import { RepositoriesOf, sqlRepositories } from '../repositories/index.js';
import type { Params, Row, SqlExecutor } from '../repositories/sql.js';
import { UniqueViolation, type AuditRow, type ChainHead, type ChangeSignal, type Repositories, type Store, type StoreObserver } from '../store.js';

/** Prepared statements kept per connection (the audit append's, one per batch size in use). */
const MAX_PREPARED = 64;

class Connection {
  /** SQL text → its prepared statement, least recently used first. */
  private readonly prepared = new Map<string, sqlite3.Statement>();

  private constructor(readonly db: sqlite3.Database) {}

  static async open(file: string): Promise<Connection> {
    const db = await new Promise<sqlite3.Database>((resolve, reject) => {
      const d = new sqlite3.Database(file, (err) => (err ? reject(err) : resolve(d)));
    });
    const c = new Connection(db);
    db.configure('busyTimeout', 10000);
    // Switching a fresh file to WAL needs its exclusive lock, and SQLite answers SQLITE_BUSY there
    // without asking the busy handler when other processes open the same file at that moment.
    await retryBusy(() => c.run('PRAGMA journal_mode = WAL'));
    // FULL: a response that says "done" (and its audit record) survives power loss too.
    await c.run('PRAGMA synchronous = FULL');
    await c.run('PRAGMA foreign_keys = ON');
    return c;
  }

  get<T = Row>(sql: string, params: Params = []): Promise<T | undefined> {
    return new Promise((resolve, reject) => this.db.get(sql, params, (err, row) => (err ? reject(typed(err)) : resolve(row as T))));
  }
  all<T = Row>(sql: string, params: Params = []): Promise<T[]> {
    return new Promise((resolve, reject) => this.db.all(sql, params, (err, rows) => (err ? reject(typed(err)) : resolve(rows as T[]))));
  }
  run(sql: string, params: Params = []): Promise<{ changes: number; lastID: number }> {
    return new Promise((resolve, reject) =>
      this.db.run(sql, params, function (err) {
        if (err) reject(typed(err));
        else resolve({ changes: this.changes, lastID: this.lastID });
      }),
    );
  }
  /**
   * Like run, on a statement prepared once and kept: SQLite parses and plans a group commit's
   * multi-row INSERT (13 parameters a row) once per batch size instead of on every commit.
   */
  async runPrepared(sql: string, params: Params): Promise<{ changes: number; lastID: number }> {
    let stmt = this.prepared.get(sql);
    if (stmt) this.prepared.delete(sql);
    else {
      stmt = await new Promise<sqlite3.Statement>((resolve, reject) => {
        const st = this.db.prepare(sql, (err) => (err ? reject(typed(err)) : resolve(st)));
      });
      if (this.prepared.size >= MAX_PREPARED) {
        const [oldest, old] = this.prepared.entries().next().value as [string, sqlite3.Statement];
        this.prepared.delete(oldest);
        old.finalize();
      }
    }
    this.prepared.set(sql, stmt);
    const st = stmt;
    return new Promise((resolve, reject) =>
      st.run(params, function (err) {
        if (err) reject(typed(err));
        else resolve({ changes: this.changes, lastID: this.lastID });
      }),
    );
  }
  exec(sql: string): Promise<void> {
    return new Promise((resolve, reject) => this.db.exec(sql, (err) => (err ? reject(typed(err)) : resolve())));
  }
  close(): Promise<void> {
    // A connection with unfinalized statements would not close.
    for (const stmt of this.prepared.values()) stmt.finalize();
    this.prepared.clear();
    return new Promise((resolve) => this.db.close(() => resolve()));
  }
}

function typed(e: Error): Error {
  return /UNIQUE constraint failed/.test(e.message) ? Object.assign(new UniqueViolation(e.message), { code: (e as { code?: string }).code }) : e;
}

const MIGRATIONS_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations');
const ROTATE_AT_BYTES = 1 << 20;

/**
 * SQLite metadata store (one host): one connection for writes (transactions serialised
 * in-process, BEGIN IMMEDIATE across processes) and one for reads, so a reader never sees
 * another request's uncommitted transaction. WAL mode lets them run side by side.
 */
export class SqliteStore extends RepositoriesOf implements Store {
  readonly kind = 'sqlite' as const;
  private queue: Promise<unknown> = Promise.resolve();
  protected readonly repos: Repositories;
  private readonly txRepos: Repositories;
  readonly audit: SqliteAuditRepository;

  private constructor(
    private readonly writer: Connection,
    private readonly reader: Connection,
    readonly file: string,
    readonly dataDir: string,
    private readonly observer: StoreObserver,
  ) {
    super();
    const timed = <T>(p: Promise<T>): Promise<T> => {
      if (!observer.query) return p;
      const started = performance.now();
      return p.finally(() => observer.query!((performance.now() - started) / 1000));
    };
    const root: SqlExecutor = {
      dialect: 'sqlite',
      inTransaction: false,
      get: (sql, params) => timed(this.reader.get(sql, params)),
      all: (sql, params) => timed(this.reader.all(sql, params)),
      run: (sql, params = []) => timed(this.writeStatement(sql, params)),
    };
    const inTx: SqlExecutor = {
      dialect: 'sqlite',
      inTransaction: true,
      get: (sql, params) => timed(this.writer.get(sql, params)),
      all: (sql, params) => timed(this.writer.all(sql, params)),
      run: (sql, params) => timed(this.writer.run(sql, params)),
    };
    this.repos = sqlRepositories(root);
    this.txRepos = sqlRepositories(inTx);
    this.audit = new SqliteAuditRepository(root, this);
  }

  static async open(dataDir: string, observer: StoreObserver = {}): Promise<SqliteStore> {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const file = path.join(dataDir, 'kmsd.sqlite');
    const writer = await Connection.open(file);
    const store = new SqliteStore(writer, await Connection.open(file), file, dataDir, observer);
    await store.migrate();
    return store;
  }

  /** Applies migrations/NNN-*.sql not yet recorded; each in its own transaction, so re-running is safe. */
  async migrate(): Promise<number> {
    let applied = 0;
    await retryBusy(() =>
      this.writer.run('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)'),
    );
    const dir = sourceMigrationsDir(MIGRATIONS_DIR);
    const files = readdirSync(dir)
      .filter((f) => /^\d{3}-.*\.sql$/.test(f))
      .sort();
    for (const f of files) {
      const version = Number(f.slice(0, 3));
      const sql = readFileSync(path.join(dir, f), 'utf8');
      const done = await this.inWriteTransaction(async () => {
        if (await this.writer.get('SELECT 1 FROM schema_migrations WHERE version = ?', [version])) return false;
        await this.writer.exec(sql);
        await this.writer.run('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)', [version, f, new Date().toISOString()]);
        return true;
      });
      if (done) applied++;
    }
    return applied;
  }

  /** Versions recorded in schema_migrations, ascending. */
  async migrationVersions(): Promise<number[]> {
    return (await this.reader.all<{ version: number }>('SELECT version FROM schema_migrations ORDER BY version')).map((r) => r.version);
  }

  /** The journal mode of the database file (WAL expected). */
  async journalMode(): Promise<string> {
    return (await this.reader.get<{ journal_mode: string }>('PRAGMA journal_mode'))!.journal_mode;
  }

  /**
   * One self-contained write statement (atomic on its own, autocommit), queued with the
   * transactions so it never lands inside someone else's. One thread-pool hop instead of the
   * four of BEGIN…COMMIT: the audit trail's group commit is built on it.
   */
  writeStatement(sql: string, params: Params, o: { prepared?: boolean } = {}): Promise<{ changes: number; lastID: number }> {
    const run = () => retryBusy(() => (o.prepared ? this.writer.runPrepared(sql, params) : this.writer.run(sql, params)), 5, 20);
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => {});
    return result;
  }

  transaction<T>(fn: (tx: Repositories) => Promise<T>): Promise<T> {
    return this.inWriteTransaction(() => fn(this.txRepos));
  }

  /** Runs `fn` in one write transaction (BEGIN IMMEDIATE), retrying if another process holds the lock. */
  private inWriteTransaction<T>(fn: () => Promise<T>): Promise<T> {
    const run = async (): Promise<T> => {
      await retryBusy(() => this.writer.run('BEGIN IMMEDIATE'));
      try {
        const out = await fn();
        await this.writer.run('COMMIT');
        return out;
      } catch (e) {
        await this.writer.run('ROLLBACK').catch(() => {});
        throw e;
      }
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => {});
    return result;
  }

  /**
   * Several processes on one data dir: after commit a writer appends one byte to a generation
   * file (O_APPEND: concurrent writers never lose a bump); readers compare the file's inode and
   * size (one stat(2), ~1 µs) before trusting their in-memory view. The file is replaced (new
   * inode) when it grows large.
   */
  changeSignal(): ChangeSignal {
    const genFile = path.join(this.dataDir, 'kmsd.generation');
    return {
      current() {
        const st = statSync(genFile, { throwIfNoEntry: false });
        return st ? `${st.ino}:${st.size}` : '';
      },
      async bump() {
        appendFileSync(genFile, '.');
        if ((statSync(genFile, { throwIfNoEntry: false })?.size ?? 0) > ROTATE_AT_BYTES) {
          const tmp = `${genFile}.${process.pid}`;
          writeFileSync(tmp, '.');
          renameSync(tmp, genFile);
        }
      },
      close() {},
    };
  }

  async ping(): Promise<void> {
    await this.reader.get('SELECT 1');
  }

  async isEmpty(): Promise<boolean> {
    const r = await this.reader.get<{ n: number }>(
      'SELECT (SELECT COUNT(*) FROM keys) + (SELECT COUNT(*) FROM principals) + (SELECT COUNT(*) FROM import_tokens) + (SELECT COUNT(*) FROM audit_events) AS n',
    );
    return Number(r?.n ?? 0) === 0;
  }

  /** Consistent online copy of the database into `file` (kmsctl backup). */
  async backupTo(file: string): Promise<void> {
    await this.inWriteTransaction(async () => undefined); // make sure no migration is half-applied
    await this.reader.get('VACUUM INTO ?', [file]);
  }

  async close(): Promise<void> {
    await this.queue;
    await this.reader.close();
    await this.writer.close();
  }
}

/**
 * Appends batches to the one hash chain of the data dir with ONE guarded INSERT each: it only
 * writes if the chain's head is still the one the batch was hashed against (atomic in SQLite: a
 * stale snapshot cannot take the write lock). If another process appended meanwhile, nothing is
 * written and the batch is re-chained on the new head.
 */
class SqliteAuditRepository extends SqlAuditReads {
  /** Last committed link of the chain as this process last saw it (another process may have moved on). */
  private head?: ChainHead;

  constructor(
    q: SqlExecutor,
    private readonly store: SqliteStore,
  ) {
    super(q);
  }

  async append(build: (head: ChainHead) => AuditRow[]): Promise<void> {
    for (let attempt = 0; attempt < 50; attempt++) {
      const head = this.head ?? (await this.readHead());
      const rows = build(head);
      if (!rows.length) return;
      const values = rows.map(() => '(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)').join(', ');
      const res = await this.store.writeStatement(
        `INSERT INTO audit_events (${AUDIT_COLUMNS})
         SELECT * FROM (VALUES ${values})
         WHERE COALESCE((SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1), ?) = ?`,
        [...rows.flatMap(auditParams), '0'.repeat(64), head.hash],
        { prepared: true },
      );
      if (res.changes === rows.length) {
        const last = rows[rows.length - 1]!;
        this.head = { seq: last.seq, hash: last.hash };
        return;
      }
      this.head = undefined;
    }
    throw new Error('audit: could not extend the hash chain (contention)');
  }
}

function isBusy(e: unknown): boolean {
  return typeof e === 'object' && e !== null && ['SQLITE_BUSY', 'SQLITE_LOCKED'].includes((e as { code?: string }).code ?? '');
}

/**
 * `fn` again while it fails with SQLITE_BUSY or SQLITE_LOCKED (at most 50 retries, `minMs` to
 * `minMs + jitterMs` apart): another process holds the write lock, or SQLite refused without
 * calling its busy handler (a fresh data dir's switch to WAL while other processes open it).
 */
async function retryBusy<T>(fn: () => Promise<T>, minMs = 20, jitterMs = 50): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      if (!isBusy(e) || attempt >= 50) throw e;
      await new Promise((r) => setTimeout(r, minMs + Math.random() * jitterMs));
    }
  }
}
