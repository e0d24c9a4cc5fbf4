import { MongoServer } from './mongo.js';
import { PostgresServer } from './postgres.js';

/** One MongoDB-compatible server for the whole mocha run (suites that stop MongoDB start their own). */
let shared: MongoServer | undefined;
/** One PostgreSQL cluster for the run, started on first use (only store/cluster tests need it). */
let sharedPg: Promise<PostgresServer> | undefined;

export function sharedMongoUri(): string {
  if (process.env.MONGODB_URI) return process.env.MONGODB_URI;
  if (!shared) throw new Error('shared MongoDB not started (root hook missing)');
  return shared.uri;
}

/** The run's PostgreSQL cluster (tests call `createDatabase()` on it for a fresh database). */
export function sharedPostgres(): Promise<PostgresServer> {
  return (sharedPg ??= PostgresServer.start('shared'));
}

export const mochaHooks = {
  async beforeAll(this: Mocha.Context) {
    this.timeout(60_000);
    if (!process.env.MONGODB_URI) shared = await MongoServer.start('shared');
  },
  async afterAll(this: Mocha.Context) {
    this.timeout(60_000);
    // The shared server and any a suite started and left: none outlives the run or leaves its folder behind.
    await MongoServer.destroyAll();
    if (sharedPg) await (await sharedPg.catch(() => undefined))?.destroy();
  },
};
