import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { KmsError, storeUnavailable } from '../../errors.js';
import { AUDIT_COLUMNS, auditParams, GENESIS_HASH, SqlAuditReads } from '../repositories/audit.js';
import { sourceMigrationsDir } from '../migrations-dir.js';
import { RepositoriesOf, sqlRepositories } from '../repositories/index.js';
import type { Params, Row, SqlExecutor } from '../repositories/sql.js';
import { UniqueViolation, type AuditRow, type ChainHead, type ChangeSignal, type Repositories, type Store, type StoreObserver } from '../store.js';

/** How long a request may wait out a failover (contract: up to 20 s) before answering 503. */
const FAILOVER_WAIT_MS = 20_000;
const CONNECT_TIMEOUT_MS = 5_000;
/** A statement that runs longer than this is cancelled by the server (and answered 503). */
const STATEMENT_TIMEOUT_MS = 15_000;
const POOL_SIZE = 10;
const CHANGES_CHANNEL = 'kmsd_changes';
/** pg_advisory_lock keys: schema migrations, and the head of the audit chain. */
const MIGRATION_LOCK = 7_100_017;
const AUDIT_CHAIN_LOCK = 7_100_018;

export interface PostgresOptions {
  /** postgresql://user@host1:port1,host2:port2/db?target_session_attrs=read-write */
  uri: string;
  password?: string;
  observer?: StoreObserver;
  log?: { warn(msg: string, meta?: object): void; info(msg: string, meta?: object): void };
}

/** int8 (BIGINT, COUNT, BIGSERIAL) as a JS number: every such value here is far below 2^53. */
const TYPES = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === 20 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

/** `?` placeholders → `$1…$n` (outside quoted literals); parameters stay bound. */
function numbered(sql: string): string {
  let n = 0;
  let quoted = false;
  let out = '';
  for (const ch of sql) {
    if (ch === "'") quoted = !quoted;
    out += ch === '?' && !quoted ? `$${++n}` : ch;
  }
  return out;
}

const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  '57P01', // admin_shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now (starting up, shutting down, in recovery)
  '25006', // read_only_sql_transaction: we are talking to a standby
  '57014', // query_canceled (statement_timeout)
]);

/** True for errors that mean "no usable primary right now" rather than a bad statement. */
export function isConnectionError(e: unknown): boolean {
  const err = e as { code?: string; message?: string };
  if (!err || typeof err !== 'object') return false;
  if (err.code && (CONNECTION_CODES.has(err.code) || err.code.startsWith('08'))) return true;
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error|not queryable|Connection ended|no primary/i.test(
    err.message ?? '',
  );
}

function typed(e: unknown): unknown {
  if (e instanceof KmsError || e instanceof UniqueViolation) return e;
  const err = e as { code?: string; message?: string };
  if (err?.code === '23505') return Object.assign(new UniqueViolation(err.message ?? 'unique violation'), { code: err.code });
  if (isConnectionError(e)) return storeUnavailable(`PostgreSQL: ${err.message ?? String(e)}`);
  return e;
}

interface HostTarget {
  host: string;
  port: number;
}

/**
 * The multi-host URI, as libpq reads it: every host is tried in order, and with
 * target_session_attrs=read-write only one that is not in recovery is taken (node-postgres
 * connects to a single host, so the choice is made here).
 */
export function parseMultiHostUri(uri: string): { hosts: HostTarget[]; base: pg.ClientConfig; readWrite: boolean } {
  const m = /^(postgres(?:ql)?:\/\/)([^@/?]*@)?([^/?]*)(.*)$/.exec(uri);
  if (!m) throw new Error('store.postgres.uri is not a postgresql:// URI');
  const hostList = m[3]!.split(',').filter(Boolean);
  const hosts = (hostList.length ? hostList : ['localhost']).map((h) => {
    const hm = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(h);
    if (!hm) throw new Error(`store.postgres.uri: bad host ${h}`);
    return { host: decodeURIComponent(hm[1]!.replace(/^\[|\]$/g, '')), port: hm[2] ? Number(hm[2]) : 5432 };
  });
  const rest = m[4]!;
  const q = rest.indexOf('?');
  const params = new URLSearchParams(q >= 0 ? rest.slice(q + 1) : '');
  const readWrite = (params.get('target_session_attrs') ?? 'read-write') !== 'any';
  params.delete('target_session_attrs');
  const single = `${m[1]}${m[2] ?? ''}placeholder${q >= 0 ? rest.slice(0, q) : rest}${params.size ? `?${params}` : ''}`;
  const u = new URL(single.replace(/^postgres(ql)?:/, 'http:'));
  const base: pg.ClientConfig = {
    user: u.username ? decodeURIComponent(u.username) : undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
    database: u.pathname.length > 1 ? decodeURIComponent(u.pathname.slice(1)) : undefined,
  };
  const sslmode = params.get('sslmode');
  if (sslmode && sslmode !== 'disable') base.ssl = sslmode === 'require' ? { rejectUnauthorized: false } : true;
  // A host given as a query parameter (e.g. ?host=/path/to/socket) wins, as with libpq.
  if (params.get('host')) return { hosts: [{ host: params.get('host')!, port: hosts[0]!.port }], base, readWrite };
  return { hosts, base, readWrite };
}

const MIGRATIONS_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations');

/**
 * PostgreSQL metadata store (cluster mode): a pool on the current primary, found through the
 * multi-host URI; on a connection error the pool is dropped, the primary looked for again
 * (bounded: FAILOVER_WAIT_MS), and the failed request answers 503 StoreUnavailable — unless
 * nothing had been sent yet, then it is retried on the new primary. Transactions run at READ
 * COMMITTED with row locks (key rows FOR UPDATE; the chain head under an advisory lock).
 */
export class PostgresStore extends RepositoriesOf implements Store {
  readonly kind = 'postgres' as const;
  readonly audit: PostgresAuditRepository;
  protected readonly repos: Repositories;
  private pool?: pg.Pool;
  private locating?: Promise<pg.Pool>;
  private closed = false;
  private readonly target: ReturnType<typeof parseMultiHostUri>;
  private readonly signals = new Set<PostgresChangeSignal>();
  private readonly guarded = new WeakSet<pg.PoolClient>();

  private constructor(private readonly opts: PostgresOptions) {
    super();
    this.target = parseMultiHostUri(opts.uri);
    if (opts.password !== undefined) this.target.base.password = opts.password;
    const root: SqlExecutor = {
      dialect: 'postgres',
      inTransaction: false,
      get: async (sql, params) => (await this.query(sql, params))[0] as never,
      all: async (sql, params) => (await this.query(sql, params)) as never,
      run: async (sql, params) => ({ changes: (await this.execute(sql, params)).rowCount ?? 0 }),
    };
    this.repos = sqlRepositories(root);
    this.audit = new PostgresAuditRepository(root, this);
  }

  /** Connects (waiting up to FAILOVER_WAIT_MS for a primary) and applies pending migrations. */
  static async open(opts: PostgresOptions): Promise<PostgresStore> {
    const store = new PostgresStore(opts);
    try {
      await store.migrate();
    } catch (e) {
      await store.close();
      throw e;
    }
    return store;
  }

  clientConfig(t: HostTarget): pg.ClientConfig {
    return {
      ...this.target.base,
      host: t.host,
      port: t.port,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      statement_timeout: STATEMENT_TIMEOUT_MS,
      query_timeout: STATEMENT_TIMEOUT_MS + 2_000,
      application_name: 'kmsd',
      types: TYPES,
    };
  }

  /** The first host that accepts a connection (and, for read-write, is not in recovery). */
  async findPrimary(): Promise<HostTarget> {
    const errors: string[] = [];
    for (const t of this.target.hosts) {
      const c = new pg.Client(this.clientConfig(t));
      c.on('error', () => undefined);
      try {
        await c.connect();
        if (this.target.readWrite) {
          const r = await c.query<{ ro: boolean }>('SELECT pg_is_in_recovery() AS ro');
          if (r.rows[0]?.ro) {
            errors.push(`${t.host}:${t.port} is a standby`);
            continue;
          }
        }
        return t;
      } catch (e) {
        errors.push(`${t.host}:${t.port}: ${(e as Error).message}`);
      } finally {
        await c.end().catch(() => undefined);
      }
    }
    throw Object.assign(new Error(`no primary: ${errors.join('; ')}`), { code: '08001' });
  }

  /** The pool on the current primary, looking for one (bounded) when there is none. */
  private currentPool(): Promise<pg.Pool> {
    if (this.pool) return Promise.resolve(this.pool);
    return (this.locating ??= (async () => {
      const deadline = Date.now() + FAILOVER_WAIT_MS;
      for (let delay = 100; ; delay = Math.min(delay * 2, 2_000)) {
        if (this.closed) throw storeUnavailable('store closed');
        try {
          const t = await this.findPrimary();
          const pool = new pg.Pool({ ...this.clientConfig(t), max: POOL_SIZE, idleTimeoutMillis: 30_000 });
          pool.on('error', (e) => this.lost(pool, e)); // an idle client lost its server
          this.pool = pool;
          this.opts.log?.info('PostgreSQL primary selected', { host: t.host, port: t.port });
          return pool;
        } catch (e) {
          if (Date.now() + delay > deadline) throw typed(e);
          await new Promise((r) => setTimeout(r, delay));
        }
      }
    })().finally(() => (this.locating = undefined)));
  }

  /** Drops a pool whose primary went away: the next statement looks for the (new) primary. */
  private lost(pool: pg.Pool | undefined, e: unknown): void {
    if (!pool || this.pool !== pool) return;
    this.pool = undefined;
    this.opts.observer?.failover?.();
    this.opts.log?.warn('PostgreSQL connection lost; looking for the primary again', { error: String((e as Error)?.message ?? e) });
    void pool.end().catch(() => undefined);
    for (const s of this.signals) s.reconnect();
  }

  /** A client from the pool; connection failures (nothing sent yet) are retried until FAILOVER_WAIT_MS. */
  async connect(): Promise<pg.PoolClient> {
    const deadline = Date.now() + FAILOVER_WAIT_MS;
    for (;;) {
      const pool = await this.currentPool();
      try {
        const client = await pool.connect();
        // A checked-out client whose server goes away emits 'error' (an unhandled one kills the
        // process); its pending query fails on its own, so here it only marks the pool lost.
        if (!this.guarded.has(client)) {
          this.guarded.add(client);
          client.on('error', (e) => this.lost(pool, e));
        }
        return client;
      } catch (e) {
        if (!isConnectionError(e)) throw e;
        this.lost(pool, e);
        if (Date.now() > deadline) throw typed(e);
      }
    }
  }

  /** Runs one statement on its own (autocommit); reads are retried after a failover, writes are not. */
  private async execute(sql: string, params: Params = [], retry = false): Promise<pg.QueryResult<Row>> {
    const text = numbered(sql);
    const deadline = Date.now() + FAILOVER_WAIT_MS;
    for (;;) {
      const client = await this.connect();
      const started = performance.now();
      try {
        const r = await client.query<Row>(text, params as unknown[]);
        client.release();
        return r;
      } catch (e) {
        const connection = isConnectionError(e);
        client.release(connection ? (e as Error) : undefined);
        if (connection) this.lost(this.pool, e);
        if (!(retry && connection && Date.now() < deadline)) throw typed(e);
      } finally {
        this.opts.observer?.query?.((performance.now() - started) / 1000);
      }
    }
  }

  private async query(sql: string, params?: Params): Promise<Row[]> {
    return (await this.execute(sql, params, true)).rows;
  }

  /**
   * One transaction on one client. A statement error aborts a PostgreSQL transaction, so the
   * first one is remembered and rethrown at the end even if `fn` caught it: nothing is
   * reported committed that was rolled back.
   */
  async withTransaction<T>(fn: (q: SqlExecutor, client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.connect();
    let failed: unknown;
    let broken = false;
    const run = async (sql: string, params: Params = []) => {
      const started = performance.now();
      try {
        return await client.query<Row>(numbered(sql), params as unknown[]);
      } catch (e) {
        failed ??= e;
        if (isConnectionError(e)) broken = true;
        throw typed(e);
      } finally {
        this.opts.observer?.query?.((performance.now() - started) / 1000);
      }
    };
    const q: SqlExecutor = {
      dialect: 'postgres',
      inTransaction: true,
      get: async (sql, params) => (await run(sql, params)).rows[0] as never,
      all: async (sql, params) => (await run(sql, params)).rows as never,
      run: async (sql, params) => ({ changes: (await run(sql, params)).rowCount ?? 0 }),
    };
    try {
      await run('BEGIN');
      const out = await fn(q, client);
      if (failed) throw typed(failed);
      await run('COMMIT');
      return out;
    } catch (e) {
      // also for a statement sent on `client` directly (not through run)
      failed ??= e;
      if (isConnectionError(e)) broken = true;
      if (!broken) await client.query('ROLLBACK').catch(() => (broken = true));
      throw typed(e);
    } finally {
      client.release(broken ? new Error('connection broken') : undefined);
      if (broken && this.pool) this.lost(this.pool, failed);
    }
  }

  transaction<T>(fn: (tx: Repositories) => Promise<T>): Promise<T> {
    return this.withTransaction((q) => fn(sqlRepositories(q)));
  }

  /**
   * Applies migrations/NNN-*.sql not yet recorded, each in its own transaction, under a
   * session advisory lock: nodes starting at once apply each migration exactly once.
   */
  async migrate(): Promise<number> {
    const client = await this.connect();
    let applied = 0;
    try {
      await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
      await client.query(
        'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)',
      );
      const files = readdirSync(sourceMigrationsDir(MIGRATIONS_DIR))
        .filter((f) => /^\d{3}-.*\.sql$/.test(f))
        .sort();
      for (const f of files) {
        const version = Number(f.slice(0, 3));
        if ((await client.query('SELECT 1 FROM schema_migrations WHERE version = $1', [version])).rowCount) continue;
        await client.query('BEGIN');
        try {
          await client.query(readFileSync(path.join(sourceMigrationsDir(MIGRATIONS_DIR), f), 'utf8'));
          await client.query('INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [version, f, new Date().toISOString()]);
          await client.query('COMMIT');
          applied++;
        } catch (e) {
          await client.query('ROLLBACK').catch(() => undefined);
          throw e;
        }
      }
      await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]);
      client.release();
    } catch (e) {
      client.release(e as Error); // a session lock dies with its connection
      throw typed(e);
    }
    return applied;
  }

  async migrationVersions(): Promise<number[]> {
    return (await this.query('SELECT version FROM schema_migrations ORDER BY version')).map((r) => Number(r.version));
  }

  changeSignal(): ChangeSignal {
    const s = new PostgresChangeSignal(this, () => this.signals.delete(s));
    this.signals.add(s);
    return s;
  }

  async notifyChanges(): Promise<void> {
    await this.execute('SELECT pg_notify(?, ?)', [CHANGES_CHANNEL, String(process.pid)]);
  }

  /** Readiness: one attempt, no waiting out a failover (a probe must answer at once). */
  async ping(): Promise<void> {
    const pool = this.pool;
    if (!pool) {
      void this.currentPool().catch(() => undefined); // keep looking in the background
      throw storeUnavailable('no PostgreSQL primary selected');
    }
    try {
      await pool.query('SELECT 1');
    } catch (e) {
      if (isConnectionError(e)) this.lost(pool, e);
      throw typed(e);
    }
  }

  async isEmpty(): Promise<boolean> {
    const r = await this.query(
      'SELECT (SELECT COUNT(*) FROM keys) + (SELECT COUNT(*) FROM principals) + (SELECT COUNT(*) FROM import_tokens) + (SELECT COUNT(*) FROM audit_events) AS n',
    );
    return Number(r[0]?.n ?? 0) === 0;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of [...this.signals]) s.close();
    await this.locating?.catch(() => undefined);
    const pool = this.pool;
    this.pool = undefined;
    await pool?.end().catch(() => undefined);
  }

  /** For the change signal's LISTEN connection: the current primary, with bounded waiting. */
  async listenClient(): Promise<pg.Client> {
    await this.currentPool();
    const t = await this.findPrimary();
    const c = new pg.Client(this.clientConfig(t));
    await c.connect();
    return c;
  }

  get isClosed(): boolean {
    return this.closed;
  }
}

/**
 * LISTEN on a dedicated connection: each notification moves the generation; so does every
 * (re)connect, which makes the change feed re-read the log — a notification missed while the
 * connection was down never leaves a stale cache.
 */
class PostgresChangeSignal implements ChangeSignal {
  private generation = 0;
  private client?: pg.Client;
  private connecting = false;
  private stopped = false;

  constructor(
    private readonly store: PostgresStore,
    private readonly onClose: () => void,
  ) {
    this.reconnect();
  }

  current(): string {
    return String(this.generation);
  }

  async bump(): Promise<void> {
    await this.store.notifyChanges();
  }

  reconnect(): void {
    if (this.connecting || this.stopped) return;
    this.connecting = true;
    const old = this.client;
    this.client = undefined;
    void old?.end().catch(() => undefined);
    void (async () => {
      for (let delay = 100; !this.stopped && !this.store.isClosed; delay = Math.min(delay * 2, 2_000)) {
        try {
          const c = await this.store.listenClient();
          c.on('notification', () => this.generation++);
          const dropped = () => {
            if (this.client === c) {
              this.connecting = false;
              this.reconnect();
            }
          };
          c.on('error', dropped);
          c.on('end', dropped);
          await c.query(`LISTEN ${CHANGES_CHANNEL}`);
          if (this.stopped) {
            await c.end().catch(() => undefined);
            return;
          }
          this.client = c;
          this.generation++; // re-read whatever was committed while not listening
          break;
        } catch {
          await new Promise((r) => setTimeout(r, delay));
        }
      }
      this.connecting = false;
    })();
  }

  close(): void {
    this.stopped = true;
    void this.client?.end().catch(() => undefined);
    this.client = undefined;
    this.onClose();
  }
}

/**
 * The cluster's one audit chain: each batch is one transaction that takes the chain lock
 * (pg_advisory_xact_lock, released at commit), reads the head, links the batch onto it and
 * inserts it. Every node group-commits its own records; the lock orders the batches.
 */
class PostgresAuditRepository extends SqlAuditReads {
  constructor(
    q: SqlExecutor,
    private readonly store: PostgresStore,
  ) {
    super(q);
  }

  async append(build: (head: ChainHead) => AuditRow[]): Promise<void> {
    await this.store.withTransaction(async (tx, client) => {
      // The lock and the head in one round trip (two statements in one simple-protocol query;
      // under READ COMMITTED the second takes its snapshot after the lock is granted): every
      // round trip while holding the lock waits for this node's event loop, and the other
      // nodes' appends wait for the lock (measured: 3 nodes served 0.24× of 1 node).
      const [, head] = (await client.query(
        `SELECT pg_advisory_xact_lock(${AUDIT_CHAIN_LOCK}); SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1`,
      )) as unknown as [pg.QueryResult, pg.QueryResult<{ seq: string; hash: string }>];
      const last = head.rows[0];
      const rows = build(last ? { seq: Number(last.seq), hash: last.hash } : { seq: 0, hash: GENESIS_HASH });
      for (let i = 0; i < rows.length; i += 1000) {
        const chunk = rows.slice(i, i + 1000);
        await tx.run(
          `INSERT INTO audit_events (${AUDIT_COLUMNS}) VALUES ${chunk.map(() => '(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)').join(', ')}`,
          chunk.flatMap(auditParams),
        );
      }
    });
  }
}
