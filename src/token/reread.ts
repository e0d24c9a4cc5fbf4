import { TokenError } from './errors.js';

/** How long a request waits, in all, for the token's object index to be re-read before its 503. */
export const REREAD_WAIT_MS = 10_000;

/** Errors that are "wait for this re-read, then try again", where the error is not a TokenError. */
const waitable = new WeakMap<object, Promise<void>>();

/** Marks `e` (e.g. a 503 RegionUnavailable while the index is re-read) as waitable on `reread`. */
export function awaitingReread<E extends object>(e: E, reread: Promise<void> | undefined): E {
  if (reread) waitable.set(e, reread);
  return e;
}

/** The re-read that `e` says to wait for, if any. */
export function rereadOf(e: unknown): Promise<void> | undefined {
  if (e instanceof TokenError) return e.rereading;
  return e !== null && typeof e === 'object' ? waitable.get(e) : undefined;
}

/**
 * Runs `run`; while it fails only because a token's object index is being re-read, waits for
 * that re-read and runs it again — for at most `budgetMs` in all, then the last error (a 503).
 * Safe for any request: such a failure happens before the token did the work (the object was
 * not found, or the region was drained), exactly the case a client would retry after a 503.
 */
export async function throughReread<T>(run: () => T | Promise<T>, budgetMs = REREAD_WAIT_MS): Promise<T> {
  const until = Date.now() + budgetMs;
  for (;;) {
    try {
      return await run();
    } catch (e) {
      const reread = rereadOf(e);
      const left = until - Date.now();
      if (!reread || left <= 0) throw e;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([reread.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, left)))]);
      clearTimeout(timer);
    }
  }
}
