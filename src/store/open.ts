import { readSecret } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { PostgresStore } from './postgres/postgres-store.js';
import { SqliteStore } from './sqlite/sqlite-store.js';
import type { Store, StoreObserver } from './store.js';

type Log = { warn(msg: string, meta?: object): void; info(msg: string, meta?: object): void };

/** The configured store: `store.postgres` (cluster mode), else SQLite in `dataDir`. Migrations applied. */
export async function openStore(config: Pick<Config, 'dataDir' | 'store'>, log?: Log, observer: StoreObserver = {}): Promise<Store> {
  const pgConfig = config.store?.postgres;
  if (!pgConfig) return SqliteStore.open(config.dataDir, observer);
  const password = pgConfig.passwordEnv || pgConfig.passwordFile ? readSecret(pgConfig.passwordEnv, pgConfig.passwordFile, 'store.postgres password') : undefined;
  return PostgresStore.open({ uri: pgConfig.uri, password, observer, log });
}
