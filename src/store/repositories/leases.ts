import type { LeasesRepository, NodeLease } from '../store.js';
import type { SqlExecutor } from './sql.js';

/** Node leases (table node_leases). */
export class SqlLeasesRepository implements LeasesRepository {
  constructor(private readonly q: SqlExecutor) {}

  async renew(l: NodeLease): Promise<void> {
    // rows of nodes gone for a day are of no use to anyone
    await this.q.run('DELETE FROM node_leases WHERE expires_at_ms < ?', [l.expiresAtMs - 86_400_000]);
    await this.q.run(
      'INSERT INTO node_leases (node_id, host, pid, expires_at_ms) VALUES (?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET expires_at_ms = excluded.expires_at_ms',
      [l.nodeId, l.host, l.pid, l.expiresAtMs],
    );
  }

  async livePids(nowMs: number): Promise<Set<number>> {
    const rows = await this.q.all<{ pid: number }>('SELECT DISTINCT pid FROM node_leases WHERE expires_at_ms > ?', [nowMs]);
    return new Set(rows.map((r) => Number(r.pid)));
  }

  async release(nodeId: string): Promise<void> {
    await this.q.run('DELETE FROM node_leases WHERE node_id = ?', [nodeId]);
  }
}
