import type { Store } from './store.js';

export interface CopyCounts {
  keys: number;
  versions: number;
  principals: number;
  importTokens: number;
  wrappingKeys: number;
  settings: number;
  auditRecords: number;
}

const AUDIT_PAGE = 2000;

/**
 * Copies everything of one store into another, empty one (kmsctl migrate-store): keys with
 * their versions and policies, principals, import tokens, wrapping keys, settings (the
 * installation id, so token objects stay this installation's), and the audit chain row by row
 * as it is (still verifiable). Refuses a target that is not empty.
 */
export async function copyStore(from: Store, to: Store): Promise<CopyCounts> {
  if (!(await to.isEmpty())) throw new Error('the target store is not empty; migrate-store only fills an empty store');
  const [keys, principals, importTokens, wrappingKeys, settings, aws] = await Promise.all([
    from.keys.loadAll(),
    from.principals.list(),
    from.importTokens.all(),
    from.wrappingKeys.all(),
    from.settings.all(),
    from.aws.all(),
  ]);
  await to.transaction(async (tx) => {
    for (const k of keys) await tx.keys.insert(k);
    for (const p of principals) await tx.principals.add(p);
    for (const t of importTokens) await tx.importTokens.insert(t);
    for (const w of wrappingKeys) await tx.wrappingKeys.put(w);
    for (const [name, value] of Object.entries(settings)) await tx.settings.put(name, value);
    for (const k of aws.keys) await tx.aws.insertKey(k);
    for (const a of aws.aliases) await tx.aws.insertAlias(a);
    for (const t of aws.tags) await tx.aws.putTags(t.keyIdentity, [t]);
  });
  let auditRecords = 0;
  for (let seq = 1; ; ) {
    const rows = await from.audit.readFrom(seq, AUDIT_PAGE);
    if (!rows.length) break;
    await to.audit.copyIn(rows);
    auditRecords += rows.length;
    seq = rows[rows.length - 1]!.seq + 1;
  }
  return {
    keys: keys.length,
    versions: keys.reduce((n, k) => n + k.versions.length, 0),
    principals: principals.length,
    importTokens: importTokens.length,
    wrappingKeys: wrappingKeys.length,
    settings: Object.keys(settings).length,
    auditRecords,
  };
}
