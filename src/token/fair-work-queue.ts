import { tooManyRequests } from '../errors.js';

/**
 * Expensive token work (key-pair generation) shared fairly between organisations.
 *
 * Why: an RSA-3072 pair takes ~0.6 s in SoftHSM2, which serialises one process's threads, so
 * 48 parallel import-parameters of one organisation once pushed another's key creation from
 * 12 ms to ~10 s. Here each organisation has its own FIFO queue, the queues are served
 * round-robin (one job per organisation per turn), at most `concurrency` jobs run on the token
 * at once, and an organisation with `maxPendingPerOrganisation` jobs queued or running gets
 * 429 TooManyRequests instead of a place in line. So another organisation waits for at most
 * the jobs already running plus one job of each other busy organisation.
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

export class FairWorkQueue {
  /** Organisations with queued jobs, in the order they are served; each appears once. */
  private readonly turn: string[] = [];
  private readonly queued = new Map<string, Job[]>();
  /** Queued + running jobs per organisation. */
  private readonly pendingBy = new Map<string, number>();
  private running = 0;
  /** Moving average of job durations (ms), for Retry-After. */
  private averageMs = INITIAL_JOB_MS;
  private readonly now: () => number;

  constructor(private readonly o: FairWorkQueueOptions) {
    this.now = o.now ?? (() => performance.now());
  }

  /** Jobs queued or running for `organisation`. */
  pending(organisation: string): number {
    return this.pendingBy.get(organisation) ?? 0;
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
    this.pendingBy.set(organisation, pending + 1);
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
          const left = this.pending(organisation) - 1;
          if (left > 0) this.pendingBy.set(organisation, left);
          else this.pendingBy.delete(organisation);
          this.dispatch();
        });
      };
      let q = this.queued.get(organisation);
      if (!q) {
        this.queued.set(organisation, (q = []));
        this.turn.push(organisation);
      }
      q.push({ start });
      this.dispatch();
    });
  }

  /** Starts queued jobs, one organisation after the other, while there is room on the token. */
  private dispatch(): void {
    while (this.running < this.o.concurrency && this.turn.length) {
      const org = this.turn.shift()!;
      const q = this.queued.get(org)!;
      const job = q.shift()!;
      if (q.length) this.turn.push(org);
      else this.queued.delete(org);
      job.start();
    }
  }

  /**
   * When one of this organisation's jobs has likely finished (and made room): one round of the
   * busy organisations' turns, each a job of the average duration, `concurrency` at a time.
   */
  private retryAfterSeconds(): number {
    const busy = Math.max(1, this.pendingBy.size);
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

/** Per region: two key-pair generations on the token at once, 16 pending per organisation. */
export const KEYGEN_CONCURRENCY = 2;
export const KEYGEN_MAX_PENDING_PER_ORGANISATION = 16;
