import path from 'node:path';
import sqlite3 from 'sqlite3';
import type { TestStack } from './stack.js';

/** Reads (or tampers with) a stack's metadata database directly, as an attacker or auditor would. */
export async function sql<T = Record<string, unknown>>(stack: TestStack, query: string, params: unknown[] = []): Promise<T[]> {
  const db = new sqlite3.Database(path.join(stack.dataDir, 'kmsd.sqlite'));
  try {
    return await new Promise<T[]>((resolve, reject) => db.all(query, params, (e, rows) => (e ? reject(e) : resolve(rows as T[]))));
  } finally {
    await new Promise((r) => db.close(r));
  }
}
