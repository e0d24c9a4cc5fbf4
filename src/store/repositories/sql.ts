import type { StoreKind } from '../store.js';

export type Row = Record<string, unknown>;
export type Params = unknown[];

/**
 * What the shared repositories run their SQL on: a connection, a transaction or a pool.
 * Statements use `?` placeholders (the PostgreSQL executor numbers them); parameters are
 * always bound, never spliced into the text. Errors come out typed (UniqueViolation,
 * StoreUnavailable) so repositories and services need not know the driver.
 */
export interface SqlExecutor {
  readonly dialect: StoreKind;
  /** True inside a write transaction (PostgreSQL then locks rows it reads for a compare-and-set). */
  readonly inTransaction: boolean;
  get<T = Row>(sql: string, params?: Params): Promise<T | undefined>;
  all<T = Row>(sql: string, params?: Params): Promise<T[]>;
  run(sql: string, params?: Params): Promise<{ changes: number }>;
}
