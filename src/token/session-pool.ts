import type pkcs11js from 'pkcs11js';

/**
 * Sessions of one token. A PKCS#11 session runs one operation at a time, so an async operation
 * holds its session from *Init to the result; callers beyond the pool size wait in FIFO order.
 */
export class TokenSessionPool {
  private readonly idle: pkcs11js.Handle[];
  private readonly waiters: ((s: pkcs11js.Handle) => void)[] = [];

  constructor(readonly sessions: pkcs11js.Handle[]) {
    this.idle = [...sessions];
  }

  /**
   * Runs `fn` on an exclusive session. If it fails, `renew` may swap the session for a fresh
   * one: a failed call can leave its operation active on the session (SoftHSM2 does on
   * CKR_ARGUMENTS_BAD), and a session must never carry that into the next caller's request.
   */
  async use<T>(fn: (session: pkcs11js.Handle) => Promise<T>, renew?: (session: pkcs11js.Handle, error: unknown) => pkcs11js.Handle): Promise<T> {
    let session = this.idle.pop() ?? (await new Promise<pkcs11js.Handle>((resolve) => this.waiters.push(resolve)));
    try {
      return await fn(session);
    } catch (e) {
      if (renew) session = renew(session, e);
      throw e;
    } finally {
      const next = this.waiters.shift();
      if (next) next(session);
      else this.idle.push(session);
    }
  }

  /** Sessions currently lent out (an async operation is in flight on each). */
  get busy(): number {
    return this.sessions.length - this.idle.length;
  }

  get waiting(): number {
    return this.waiters.length;
  }
}
