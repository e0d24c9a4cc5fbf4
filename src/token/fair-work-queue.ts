import { tooManyRequests } from '../errors.js';

/**
 * Expensive token work (key-pair generation) shared fairly between organisations.
 *
 * Why: an RSA-3072 pair takes ~0.6 s in SoftHSM2, which serialises one process's threads, so
 * 48 parallel import-parameters of one organisation once pushed another's key creation from
 * 12 ms to ~10 s. Here each organisation has its own FIFO queue, at most `concurrency` jobs
 * run on the token at once, and an organisation with `maxPendingPerOrganisation` jobs queued
 * or running gets 429 TooManyRequests instead of a place in line.
 *
 * The queues are served round-robin in start-time fair order: the next job is taken from the
 * organisation that has started the fewest jobs while it had work waiting (ties: the one served
 * least recently). An organisation arriving with nothing pending starts level with the
 * least-served busy one and ahead of it, so it waits only for a running job to finish — not for
 * a turn of each flooding organisation — and then alternates with the others, never bursts.
 *
 * Pure logic (no token, no clock of the domain): one instance per region, built by the composition root.
 */
export interface FairWorkQueueOptions {
  /** Names the queue in messages (the region). */
  name: string;
  /** Jobs running at once (SoftHSM2 serialises a process's threads: 1–2 is plenty). */
  concurrency: number;
  /** Queued + running jobs one organisation may have; beyond → 429. */
  maxPendingPerOrganisation: number;
  /** Milliseconds, for the Retry-After estimate only (default: performance.now). */
  now?: () => number;
}

export interface RunOptions {
  /** false for the daemon's own work (scheduled rotation): it waits its turn but is never refused. */
  bounded?: boolean;
}

interface Job {
  start: () => void;
}

/** The first estimate of one job's duration, before any finished (an RSA-3072 pair on SoftHSM2). */
const INITIAL_JOB_MS = 600;
/** Retry-After never asks for more than this (seconds). */
const MAX_RETRY_AFTER_S = 60;

/** An organisation with work queued or running, and its place in the fair order. */
interface OrgState {
  jobs: Job[];
  /** Queued + running jobs. */
  pending: number;
  /** Jobs started since it last had nothing pending. */
  started: number;
  /** Order of its last start (arrival order, negative, before its first). */
  lastServed: number;
}

export class FairWorkQueue {
  private readonly orgs = new Map<string, OrgState>();
  private running = 0;
  /** Counts starts (and arrivals) to order ties. */
  private seq = 0;
  /** Moving average of job durations (ms), for Retry-After. */
  private averageMs = INITIAL_JOB_MS;
  private readonly now: () => number;

  constructor(private readonly o: FairWorkQueueOptions) {
    this.now = o.now ?? (() => performance.now());
  }

  /** Jobs queued or running for `organisation`. */
  pending(organisation: string): number {
    return this.orgs.get(organisation)?.pending ?? 0;
  }

  /**
   * Runs `work` when it is `organisation`'s turn; settles with its result.
   * @throws KmsError TooManyRequests (with retryAfterSeconds) when the organisation already has
   *   maxPendingPerOrganisation jobs queued or running (unless `bounded: false`).
   */
  run<T>(organisation: string, work: () => Promise<T>, opts: RunOptions = {}): Promise<T> {
    const pending = this.pending(organisation);
    if (opts.bounded !== false && pending >= this.o.maxPendingPerOrganisation)
      return Promise.reject(
        tooManyRequests(
          `organisation ${organisation} already has ${pending} key-pair generations pending in region ${this.o.name}, ` +
            `its share of the token's expensive work (at most ${this.o.maxPendingPerOrganisation} at once); retry later`,
          this.retryAfterSeconds(),
        ),
      );
    let state = this.orgs.get(organisation);
    if (!state) {
      // Level with the least-served busy organisation, and ahead of it on the tie (it was served, this one not yet).
      let least = Infinity;
      for (const other of this.orgs.values()) least = Math.min(least, other.started);
      state = { jobs: [], pending: 0, started: least === Infinity ? 0 : least, lastServed: -Number.MAX_SAFE_INTEGER + ++this.seq };
      this.orgs.set(organisation, state);
    }
    const org = state;
    org.pending++;
    return new Promise<T>((resolve, reject) => {
      const start = () => {
        this.running++;
        const began = this.now();
        let result: Promise<T>;
        try {
          result = work();
        } catch (e) {
          result = Promise.reject(e);
        }
        result.then(resolve, reject).finally(() => {
          this.averageMs = 0.8 * this.averageMs + 0.2 * Math.max(0, this.now() - began);
          this.running--;
          if (--org.pending === 0) this.orgs.delete(organisation);
          this.dispatch();
        });
      };
      org.jobs.push({ start });
      this.dispatch();
    });
  }

  /** Starts queued jobs in fair order while there is room on the token. */
  private dispatch(): void {
    while (this.running < this.o.concurrency) {
      let next: OrgState | undefined;
      for (const q of this.orgs.values())
        if (q.jobs.length && (!next || q.started < next.started || (q.started === next.started && q.lastServed < next.lastServed))) next = q;
      if (!next) return;
      const job = next.jobs.shift()!;
      next.started++;
      next.lastServed = ++this.seq;
      job.start();
    }
  }

  /**
   * When one of this organisation's jobs has likely finished (and made room): one round of the
   * busy organisations' turns, each a job of the average duration, `concurrency` at a time.
   */
  private retryAfterSeconds(): number {
    const busy = Math.max(1, this.orgs.size);
    return Math.min(MAX_RETRY_AFTER_S, Math.max(1, Math.ceil((this.averageMs * busy) / this.o.concurrency / 1000)));
  }
}

/** The fair queues of every region, made on first use with the same limits. */
export class TokenWorkQueues {
  private readonly byRegion = new Map<string, FairWorkQueue>();

  constructor(private readonly limits: Omit<FairWorkQueueOptions, 'name'>) {}

  /** The queue of `region`'s token. */
  of(region: string): FairWorkQueue {
    let q = this.byRegion.get(region);
    if (!q) this.byRegion.set(region, (q = new FairWorkQueue({ ...this.limits, name: region })));
    return q;
  }
}

/**
 * Per region and process: one key-pair generation on the token at a time (SoftHSM2 serialises a
 * process's threads, so a second one adds no throughput, only waiting: a newcomer then waits for
 * one running generation, not two), 16 pending per organisation. A multi-worker daemon has one
 * queue per worker process.
 */
export const KEYGEN_CONCURRENCY = 1;
export const KEYGEN_MAX_PENDING_PER_ORGANISATION = 16;
