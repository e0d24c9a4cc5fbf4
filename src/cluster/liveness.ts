import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type { LeasesRepository } from '../store/store.js';

/**
 * Is the process that created a token object (its pid is in the CKA_ID) still running?
 * Reconciliation and the BYOK wrapping-key reservation use this to tell "in flight" from
 * "orphaned". Answers true when unsure: the 10-minute rule then decides.
 */
export type CreatorAlive = (pid: number) => Promise<boolean>;

/** One host (SQLite in a data dir): the local process table. */
export const localProcessAlive: CreatorAlive = async (pid) => {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
};

const LEASE_TTL_MS = 30_000;
const RENEW_EVERY_MS = 10_000;

/**
 * Cluster mode: a process id means nothing on another host, so every node holds a lease in the
 * store (renewed every 10 s, 30 s long) and a creator counts as alive while any live lease
 * carries its pid (a pid shared by nodes on two hosts only keeps an orphan longer — never
 * destroys an object in flight).
 */
export class NodeLeaseKeeper {
  readonly nodeId = `${os.hostname()}/${process.pid}/${randomBytes(4).toString('hex')}`;
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly leases: LeasesRepository,
    private readonly onError: (e: unknown) => void,
  ) {}

  async start(): Promise<void> {
    await this.renew();
    this.timer = setInterval(() => void this.renew().catch(this.onError), RENEW_EVERY_MS);
    this.timer.unref();
  }

  private renew(): Promise<void> {
    return this.leases.renew({ nodeId: this.nodeId, host: os.hostname(), pid: process.pid, expiresAtMs: Date.now() + LEASE_TTL_MS });
  }

  readonly alive: CreatorAlive = async (pid) => pid === process.pid || (await this.leases.livePids(Date.now())).has(pid);

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.leases.release(this.nodeId).catch(() => undefined);
  }
}
