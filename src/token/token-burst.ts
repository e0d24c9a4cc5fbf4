/**
 * Runs the short synchronous token calls of the requests read in one event-loop turn back to
 * back, in that turn's check phase (setImmediate), instead of one between each request's HTTP
 * parsing, JSON and audit work. Used for the single AES-GCM encrypts and decrypts
 * (CryptoService) and for EdDSA/ECDSA signatures on the event loop (RegionToken.sign).
 *
 * Why: SoftHSM2's code and data stay in the CPU caches across consecutive calls. Measured
 * with pkcs11js on this machine: AES-GCM encrypt 14 µs in a tight loop, 20–22 µs when each
 * call follows unrelated JavaScript work, 14–15 µs when 16 calls follow 16 such pieces of
 * work; an ECDSA signature interleaved with other JavaScript took ~30 % longer. Under load a
 * turn reads a dozen requests or more; alone, a request waits only for the turn's check phase.
 *
 * `budgetMs` bounds one run (the rest runs in the next turn, after I/O): for calls slow enough
 * that a turn's worth of them could hold the event loop (signatures).
 */
export class TokenBurst {
  private queue: { run: () => unknown; resolve: (v: unknown) => void; reject: (e: unknown) => void }[] = [];
  private scheduled = false;

  constructor(private readonly budgetMs = Infinity) {}

  /** Resolves with what `run` returns (or rejects with what it throws), run in a turn's burst, in call order. */
  run<T>(run: () => T | Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ run, resolve: resolve as (v: unknown) => void, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.flush);
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const jobs = this.queue;
    this.queue = [];
    const until = this.budgetMs === Infinity ? Infinity : performance.now() + this.budgetMs;
    let i = 0;
    for (; i < jobs.length; i++) {
      if (until !== Infinity && i > 0 && performance.now() >= until) break;
      const j = jobs[i]!;
      try {
        j.resolve(j.run());
      } catch (e) {
        j.reject(e);
      }
    }
    if (i < jobs.length) {
      // Over budget: the rest goes first in the next turn's burst.
      this.queue = jobs.slice(i).concat(this.queue);
      this.schedule();
    }
  };
}
