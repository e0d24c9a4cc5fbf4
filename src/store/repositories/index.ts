import type { Repositories } from '../store.js';
import { SqlAwsStatements } from './aws.js';
import { SqlChangesRepository } from './changes.js';
import { SqlImportTokensRepository } from './import-tokens.js';
import { SqlKeysRepository } from './keys.js';
import { SqlLeasesRepository } from './leases.js';
import { SqlPrincipalsRepository } from './principals.js';
import { SqlSettingsRepository } from './settings.js';
import type { SqlExecutor } from './sql.js';
import { SqlWrappingKeysRepository } from './wrapping-keys.js';

/** The shared repositories bound to one executor (a pool, a connection or a transaction). */
export function sqlRepositories(q: SqlExecutor): Repositories {
  return {
    keys: new SqlKeysRepository(q),
    principals: new SqlPrincipalsRepository(q),
    importTokens: new SqlImportTokensRepository(q),
    wrappingKeys: new SqlWrappingKeysRepository(q),
    settings: new SqlSettingsRepository(q),
    changes: new SqlChangesRepository(q),
    leases: new SqlLeasesRepository(q),
    aws: new SqlAwsStatements(q),
  };
}

/**
 * A store's repositories outside any transaction, as the members Store has (store.keys, …,
 * store.aws): each reads the subclass's `repos`, the repositories over its root executor.
 */
export abstract class RepositoriesOf implements Repositories {
  protected abstract readonly repos: Repositories;

  get keys() {
    return this.repos.keys;
  }
  get principals() {
    return this.repos.principals;
  }
  get importTokens() {
    return this.repos.importTokens;
  }
  get wrappingKeys() {
    return this.repos.wrappingKeys;
  }
  get settings() {
    return this.repos.settings;
  }
  get changes() {
    return this.repos.changes;
  }
  get leases() {
    return this.repos.leases;
  }
  get aws() {
    return this.repos.aws;
  }
}
