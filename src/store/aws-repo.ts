import type { AwsAliasRow, AwsKeyRow, AwsKeyState, AwsScope, AwsTag, Store } from './store.js';

export type { AwsAliasRow, AwsKeyRow, AwsKeyState, AwsScope, AwsTag } from './store.js';

/**
 * The AWS API's metadata in the store (aliases, AWS tags, per-key AWS attributes), read by every
 * process and host. Statements that belong together run in one store transaction.
 */
export class AwsRepository {
  constructor(private readonly store: Pick<Store, 'aws' | 'transaction'>) {}

  insertKey(row: AwsKeyRow): Promise<void> {
    return this.store.aws.insertKey(row);
  }

  key(identity: string): Promise<AwsKeyRow | undefined> {
    return this.store.aws.key(identity);
  }

  /** Keys that exist only on the AWS side (EXTERNAL keys without material) in a scope. */
  keysWithoutMaterial(scope: AwsScope): Promise<AwsKeyRow[]> {
    return this.store.aws.keysWithoutMaterial(scope);
  }

  /** Compare-and-set of a key's state; false when it was not in `from` any more. */
  setKeyState(identity: string, from: AwsKeyState, to: AwsKeyState, deletionAt: string | null): Promise<boolean> {
    return this.store.aws.setKeyState(identity, from, to, deletionAt);
  }

  /** Removes a key's AWS rows (attributes, aliases, tags) together: an AWS-only key whose deletion window ended. */
  deleteKey(identity: string): Promise<void> {
    return this.store.transaction((tx) => tx.aws.deleteKey(identity));
  }

  alias(scope: AwsScope, aliasName: string): Promise<AwsAliasRow | undefined> {
    return this.store.aws.alias(scope, aliasName);
  }

  /** Every alias of the scope (or of one key), ordered by name. */
  aliases(scope: AwsScope, keyIdentity?: string): Promise<AwsAliasRow[]> {
    return this.store.aws.aliases(scope, keyIdentity);
  }

  /** False when the name is taken in the scope. */
  createAlias(scope: AwsScope, aliasName: string, keyIdentity: string, nowIso: string): Promise<boolean> {
    return this.store.aws.createAlias(scope, aliasName, keyIdentity, nowIso);
  }

  /** False when no such alias exists. */
  updateAlias(scope: AwsScope, aliasName: string, keyIdentity: string, nowIso: string): Promise<boolean> {
    return this.store.aws.updateAlias(scope, aliasName, keyIdentity, nowIso);
  }

  /** False when no such alias exists. */
  deleteAlias(scope: AwsScope, aliasName: string): Promise<boolean> {
    return this.store.aws.deleteAlias(scope, aliasName);
  }

  tags(keyIdentity: string): Promise<AwsTag[]> {
    return this.store.aws.tags(keyIdentity);
  }

  /**
   * Sets tags (a key already tagged gets the new value), refusing when the key would then hold
   * more than `maxTags`: false, and nothing changed (the transaction is rolled back).
   */
  async putTags(keyIdentity: string, tags: AwsTag[], maxTags: number): Promise<boolean> {
    try {
      return await this.store.transaction(async (tx) => {
        if ((await tx.aws.putTags(keyIdentity, tags)) > maxTags) throw new TooManyTags();
        return true;
      });
    } catch (e) {
      if (e instanceof TooManyTags) return false;
      throw e;
    }
  }

  removeTags(keyIdentity: string, tagKeys: string[]): Promise<void> {
    return this.store.transaction((tx) => tx.aws.removeTags(keyIdentity, tagKeys));
  }
}

/** Rolls putTags' transaction back. */
class TooManyTags extends Error {}
