/**
 * The metadata store: one interface, two implementations (sqlite/ for one host, postgres/ for a
 * cluster). Services receive these repositories, never a connection; all SQL lives below store/.
 * Every method is async and domain-typed; no row or column name escapes this layer.
 */
import type { Role } from '../config/schema.js';
import type { KeyRecord, KeyVersion } from '../keys/model.js';

export type StoreKind = 'sqlite' | 'postgres';

export type KeyPatch = Partial<Omit<KeyRecord, 'identity' | 'versions' | 'objectVersion'>>;

export interface KeysRepository {
  loadAll(): Promise<KeyRecord[]>;
  /** The key with its versions; inside a transaction on PostgreSQL the key row is locked (FOR UPDATE). */
  load(identity: string): Promise<KeyRecord | undefined>;
  /** Inserts key + versions and logs the change. Throws UniqueViolation when the slug is taken in its scope. */
  insert(key: KeyRecord): Promise<void>;
  insertVersion(identity: string, v: KeyVersion): Promise<void>;
  /**
   * Applies `patch` if the row still has `expectObjectVersion` (compare-and-set); bumps
   * objectVersion and logs the change. Returns false when another writer got there first.
   */
  update(identity: string, expectObjectVersion: number, patch: KeyPatch): Promise<boolean>;
  /** Deletes the key and its versions, logs the change. */
  delete(identity: string): Promise<void>;
  dueForDestruction(nowIso: string): Promise<string[]>;
  allCkaIds(): Promise<Set<string>>;
  /**
   * Claims up to `limit` active keys with rotation due at `nowIso` whose claim expired before
   * `nowMs` (real time), for `owner` until `untilMs`. Returns the identities actually claimed.
   */
  claimDue(nowIso: string, nowMs: number, owner: string, untilMs: number, limit: number): Promise<string[]>;
  /** Drops `owner`'s claim, leaving the key unclaimable until `untilMs` (0 = at once). */
  releaseClaim(identity: string, owner: string, untilMs: number): Promise<void>;
  /** Drops any claim (the key got its version). */
  clearClaim(identity: string): Promise<void>;
}

export interface StoredPrincipal {
  name: string;
  tokenSha256: string;
  organisations: string[];
  roles: Role[];
  createdAt: string;
}

export interface PrincipalsRepository {
  list(): Promise<StoredPrincipal[]>;
  add(p: StoredPrincipal): Promise<void>;
  /** Number of principals removed (0 or 1). */
  remove(name: string): Promise<number>;
}

export interface ImportTokenRecord {
  tokenSha256: string;
  region: string;
  organisation: string;
  project: string;
  keyType: string;
  wrappingAlgorithm: string;
  ckaId: string;
  expiresAt: string;
  usedAt: string | null;
  createdAt: string;
}

export interface ImportTokensRepository {
  insert(t: ImportTokenRecord): Promise<void>;
  byDigest(tokenSha256: string): Promise<ImportTokenRecord | undefined>;
  byCkaId(ckaId: string): Promise<ImportTokenRecord | undefined>;
  /** Single use: marks the token used if it was not (atomic); false when it already was. */
  consume(tokenSha256: string, nowIso: string): Promise<boolean>;
  /**
   * An organisation's open (unexpired, unused) import tokens in every region, and the first
   * expiry among them. Inside a transaction it also serialises concurrent issuers of the
   * organisation (PostgreSQL: an advisory lock; SQLite's write transaction is exclusive), so a
   * count-then-insert cannot go past a limit.
   */
  openCount(organisation: string, nowIso: string): Promise<{ open: number; firstExpiry: string | null }>;
  /** Marks used (keeping an earlier use time). */
  markUsed(tokenSha256: string, nowIso: string): Promise<void>;
  expiredUnused(nowIso: string): Promise<ImportTokenRecord[]>;
  /** Every token (migrate-store). */
  all(): Promise<ImportTokenRecord[]>;
}

export interface WrappingKeyRecord {
  region: string;
  ckaId: string;
  /** '' while the pair is being generated (a reservation). */
  publicKeyPem: string;
}

export interface WrappingKeysRepository {
  get(region: string): Promise<WrappingKeyRecord | undefined>;
  /** Inserts a reservation (empty PEM) unless the region has a row; true when this call inserted it. */
  reserve(region: string, ckaId: string, nowIso: string): Promise<boolean>;
  complete(region: string, ckaId: string, publicKeyPem: string): Promise<void>;
  /** Deletes the region's row if it is still this CKA_ID (and, with onlyReservation, still empty). */
  drop(region: string, ckaId: string, onlyReservation: boolean): Promise<void>;
  /** Every completed or reserved row (migrate-store). */
  all(): Promise<(WrappingKeyRecord & { createdAt: string })[]>;
  /** Inserts a row as it is (migrate-store). */
  put(r: WrappingKeyRecord & { createdAt: string }): Promise<void>;
}

export interface SettingsRepository {
  get(name: string): Promise<string | undefined>;
  /** Sets the value unless one exists; returns the stored value either way. */
  getOrInit(name: string, value: string): Promise<string>;
  /** Adds `delta` to an integer setting (0 when absent) atomically; returns the new value. */
  addInteger(name: string, delta: number): Promise<number>;
  /** Every setting (migrate-store). */
  all(): Promise<Record<string, string>>;
  /** Sets a value, replacing any. */
  put(name: string, value: string): Promise<void>;
}

export interface ChangeEntry {
  seq: number;
  identity: string;
}

/** The change feed: every change to cluster-wide state gets a sequence number. */
export interface ChangesRepository {
  record(identity: string): Promise<void>;
  since(seq: number): Promise<ChangeEntry[]>;
  last(): Promise<number>;
}

export interface NodeLease {
  nodeId: string;
  host: string;
  pid: number;
  /** Real time (ms since the epoch) until which the node counts as alive. */
  expiresAtMs: number;
}

/** Leases of running kmsd processes (cluster-wide liveness for reconciliation). */
export interface LeasesRepository {
  renew(lease: NodeLease): Promise<void>;
  /** Process ids of the nodes whose lease runs past `nowMs`. */
  livePids(nowMs: number): Promise<Set<number>>;
  release(nodeId: string): Promise<void>;
}

/** A stored audit record with its chain links. */
export interface AuditRow {
  seq: number;
  time: string;
  action: string;
  outcome: string;
  region: string | null;
  keyIdentity: string | null;
  keyVersion: string | null;
  principal: string | null;
  organisation: string | null;
  requestId: string | null;
  /** JSON text, as hashed. */
  detail: string | null;
  prevHash: string;
  hash: string;
}

export interface ChainHead {
  seq: number;
  hash: string;
}

export interface AuditQuery {
  organisation: string;
  region?: string;
  keyIdentity?: string;
  action?: string;
  since?: string;
  limit: number;
  /** Also list this action's successful records that carry no organisation (they concern every one). */
  everyOrganisationAction?: string;
}

export interface AuditRepository {
  /**
   * Appends one batch to the single hash chain: `build` is called with the committed head and
   * returns the rows (seq head.seq+1…, linked from head.hash); it may be called again when another
   * writer moved the head. Returns once the batch is durably committed.
   */
  append(build: (head: ChainHead) => AuditRow[]): Promise<void>;
  /** Up to `limit` rows with seq >= fromSeq, ascending. */
  readFrom(fromSeq: number, limit: number): Promise<AuditRow[]>;
  /** The newest `limit` matching rows, ascending. */
  query(q: AuditQuery): Promise<AuditRow[]>;
  /** Copies rows as they are (migrate-store); the target chain must be empty. */
  copyIn(rows: AuditRow[]): Promise<void>;
  count(): Promise<number>;
}

/** Where an AWS resource lives: kmsd's organisation, region and project ('' = organisation-scoped). */
export interface AwsScope {
  organisation: string;
  region: string;
  project: string;
}

export type AwsKeyState = 'Created' | 'PendingImport' | 'PendingDeletion';

/** The AWS attributes of one key (table aws_keys). */
export interface AwsKeyRow extends AwsScope {
  identity: string;
  keySpec: string;
  keyUsage: string;
  origin: 'AWS_KMS' | 'EXTERNAL';
  description: string;
  state: AwsKeyState;
  deletionAt: string | null;
  createdAt: string;
}

export interface AwsAliasRow extends AwsScope {
  aliasName: string;
  keyIdentity: string;
  createdAt: string;
  updatedAt: string;
}

export interface AwsTag {
  key: string;
  value: string;
}

/** The AWS API's tables (aws_keys, aws_aliases, aws_tags), one statement per method. */
export interface AwsStatements {
  insertKey(row: AwsKeyRow): Promise<void>;
  key(identity: string): Promise<AwsKeyRow | undefined>;
  keysWithoutMaterial(scope: AwsScope): Promise<AwsKeyRow[]>;
  /** Compare-and-set of a key's state; false when it was not in `from` any more. */
  setKeyState(identity: string, from: AwsKeyState, to: AwsKeyState, deletionAt: string | null): Promise<boolean>;
  /** A key's attributes, aliases and tags (three statements: run it in a transaction). */
  deleteKey(identity: string): Promise<void>;
  alias(scope: AwsScope, aliasName: string): Promise<AwsAliasRow | undefined>;
  aliases(scope: AwsScope, keyIdentity?: string): Promise<AwsAliasRow[]>;
  createAlias(scope: AwsScope, aliasName: string, keyIdentity: string, nowIso: string): Promise<boolean>;
  updateAlias(scope: AwsScope, aliasName: string, keyIdentity: string, nowIso: string): Promise<boolean>;
  deleteAlias(scope: AwsScope, aliasName: string): Promise<boolean>;
  tags(keyIdentity: string): Promise<AwsTag[]>;
  /** Upserts tags; returns how many the key then holds (run it in a transaction to enforce a limit). */
  putTags(keyIdentity: string, tags: AwsTag[]): Promise<number>;
  removeTags(keyIdentity: string, tagKeys: string[]): Promise<void>;
  /** Every row (migrate-store). */
  all(): Promise<{ keys: AwsKeyRow[]; aliases: AwsAliasRow[]; tags: (AwsTag & { keyIdentity: string })[] }>;
  insertAlias(a: AwsAliasRow): Promise<void>;
}

/** The repositories a transaction body may use: each call runs inside that transaction. */
export interface Repositories {
  keys: KeysRepository;
  principals: PrincipalsRepository;
  importTokens: ImportTokensRepository;
  wrappingKeys: WrappingKeysRepository;
  settings: SettingsRepository;
  changes: ChangesRepository;
  leases: LeasesRepository;
  aws: AwsStatements;
}

/**
 * Tells this process that another process (or host) committed changes: `current()` is a cheap
 * token that moves when there may be something new to replay; `bump()` tells the others.
 */
export interface ChangeSignal {
  current(): string;
  bump(): Promise<void>;
  close(): void;
}

export interface Store extends Repositories {
  readonly kind: StoreKind;
  readonly audit: AuditRepository;
  /** Runs `fn` in one write transaction; all-or-nothing. Retries only when nothing was written. */
  transaction<T>(fn: (tx: Repositories) => Promise<T>): Promise<T>;
  changeSignal(): ChangeSignal;
  /** Throws when the store cannot answer (readiness). */
  ping(): Promise<void>;
  /** True when no key, principal, import token or audit record is stored (migrate-store target). */
  isEmpty(): Promise<boolean>;
  close(): Promise<void>;
}

/** Observers for /metrics. */
export interface StoreObserver {
  query?(seconds: number): void;
  failover?(): void;
}

/** A write that broke a uniqueness rule (e.g. a slug already taken in its scope). */
export class UniqueViolation extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UniqueViolation';
  }
}

