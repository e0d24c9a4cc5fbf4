import { execFile } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from './mongo.js';

const run = promisify(execFile);
const BINDIR = process.env.PG_BINDIR ?? '/usr/lib/postgresql/15/bin';
const SUPERUSER = 'kmsd';

/** initdb refuses root: as root, every server command runs as the `postgres` OS user. */
async function asPostgres(cmd: string, args: string[]): Promise<string> {
  const bin = path.join(BINDIR, cmd);
  // cwd: a folder the postgres user may enter (the checkout may sit below a private one).
  const opts = { cwd: os.tmpdir() };
  const { stdout } = process.getuid?.() === 0 ? await run('runuser', ['-u', 'postgres', '--', bin, ...args], opts) : await run(bin, args, opts);
  return stdout;
}

async function postgresIds(): Promise<{ uid: number; gid: number } | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const [uid, gid] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])]);
  return { uid: Number(uid.stdout), gid: Number(gid.stdout) };
}

/**
 * A throwaway PostgreSQL 15 cluster (scripts/lib.sh ensure_postgres installs it): data dir
 * under tmp/test owned by postgres, a free port on 127.0.0.1 with trust auth, its unix socket
 * in the data dir. Tests get a fresh database each from `createDatabase`.
 */
/**
 * A cluster's data dir: under the system temp folder, not the checkout's tmp/, because the server
 * runs as the `postgres` user, which cannot enter a checkout below a private folder (e.g. /root).
 */
function pgDataDir(name: string, port: number): string {
  return path.join(os.tmpdir(), `kmsd-test-pg-${process.pid}-${name}-${port}`);
}

/** A free port and an empty data dir for it, owned by the postgres user when we are root. */
async function emptyDataDir(name: string): Promise<{ port: number; dir: string }> {
  const port = await freePort();
  const dir = pgDataDir(name, port);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const ids = await postgresIds();
  if (ids) chownSync(dir, ids.uid, ids.gid);
  return { port, dir };
}

export class PostgresServer {
  private constructor(
    readonly port: number,
    readonly dir: string,
  ) {}

  static async start(name = 'shared'): Promise<PostgresServer> {
    if (!existsSync(path.join(BINDIR, 'initdb'))) throw new Error(`PostgreSQL not found in ${BINDIR} (scripts/lib.sh ensure_postgres installs it)`);
    const { port, dir } = await emptyDataDir(name);
    await asPostgres('initdb', ['-D', dir, '-U', SUPERUSER, '--auth=trust', '--locale=C', '--encoding=UTF8', '--no-sync']);
    const s = new PostgresServer(port, dir);
    await s.resume();
    return s;
  }

  /**
   * A streaming standby of `primary` made with `pg_basebackup -R` (its own port and data dir),
   * started; the primary then waits for it on every commit (synchronous replication).
   */
  static async startStandby(primary: PostgresServer, name = 'standby'): Promise<PostgresServer> {
    const { port, dir } = await emptyDataDir(name);
    await asPostgres('pg_basebackup', ['-h', '127.0.0.1', '-p', String(primary.port), '-U', SUPERUSER, '-D', dir, '-R', '-X', 'stream', '--checkpoint=fast', '--no-sync']);
    const s = new PostgresServer(port, dir);
    await s.resume();
    await PostgresServer.sql(primary.uri('postgres'), "ALTER SYSTEM SET synchronous_standby_names = '*'");
    await PostgresServer.sql(primary.uri('postgres'), 'SELECT pg_reload_conf()');
    for (let i = 0; ; i++) {
      const rows = await PostgresServer.sql<{ sync_state: string }>(primary.uri('postgres'), 'SELECT sync_state FROM pg_stat_replication');
      if (rows.some((r) => r.sync_state === 'sync')) break;
      if (i > 300) throw new Error('standby did not become a synchronous replica');
      await new Promise((r) => setTimeout(r, 100));
    }
    return s;
  }

  /** Makes a standby the primary (`pg_ctl promote`), waiting until it accepts writes. */
  async promote(): Promise<void> {
    await asPostgres('pg_ctl', ['promote', '-D', this.dir, '-w', '-t', '60']);
  }

  /** (Re)starts the server on its port and data dir; waits until it accepts connections. */
  async resume(): Promise<void> {
    // fsync off: a test cluster never has to survive power loss, and the machine is shared.
    const opts = `-p ${this.port} -k ${this.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200`;
    await asPostgres('pg_ctl', ['start', '-D', this.dir, '-w', '-t', '60', '-l', path.join(this.dir, 'server.log'), '-o', opts]);
  }

  /** `immediate` is a crash (what a dying primary looks like); `fast` a clean stop. */
  async stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    await asPostgres('pg_ctl', ['stop', '-D', this.dir, '-m', mode, '-w']).catch(() => undefined);
  }

  /** Stops the server and removes its data dir (kept with KMSD_KEEP_TEST_DIRS). */
  async destroy(): Promise<void> {
    await this.stop();
    if (!process.env.KMSD_KEEP_TEST_DIRS) rmSync(this.dir, { recursive: true, force: true });
  }

  uri(database: string): string {
    return `postgresql://${SUPERUSER}@127.0.0.1:${this.port}/${database}`;
  }

  /** A new, empty database; its URI. */
  async createDatabase(prefix = 'kmsd'): Promise<string> {
    const name = `${prefix}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`.replace(/[^a-z0-9_]/g, '_');
    const c = new pg.Client({ connectionString: this.uri('postgres') });
    await c.connect();
    try {
      await c.query(`CREATE DATABASE ${name}`);
    } finally {
      await c.end();
    }
    return this.uri(name);
  }

  /** Runs SQL on a database directly, as an auditor or attacker would. */
  static async sql<T = Record<string, unknown>>(uri: string, text: string, params: unknown[] = []): Promise<T[]> {
    const c = new pg.Client({ connectionString: uri });
    await c.connect();
    try {
      return (await c.query(text, params)).rows as T[];
    } finally {
      await c.end();
    }
  }
}
