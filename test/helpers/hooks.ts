import { MongoServer } from './mongo.js';

/** One MongoDB-compatible server for the whole mocha run (suites that stop MongoDB start their own). */
let shared: MongoServer | undefined;

export function sharedMongoUri(): string {
  if (process.env.MONGODB_URI) return process.env.MONGODB_URI;
  if (!shared) throw new Error('shared MongoDB not started (root hook missing)');
  return shared.uri;
}

export const mochaHooks = {
  async beforeAll(this: Mocha.Context) {
    this.timeout(60_000);
    if (!process.env.MONGODB_URI) shared = await MongoServer.start('shared');
  },
  async afterAll() {
    // The shared server and any a suite started and left: none outlives the run or leaves its folder behind.
    await MongoServer.destroyAll();
  },
};
