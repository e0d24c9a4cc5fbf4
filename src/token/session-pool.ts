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

  async use<T>(fn: (session: pkcs11js.Handle) => Promise<T>): Promise<T> {
    const session = this.idle.pop() ?? (await new Promise<pkcs11js.Handle>((resolve) => this.waiters.push(resolve)));
    try {
      return await fn(session);
    } finally {
      const next = this.waiters.shift();
      if (next) next(session);
      else this.idle.push(session);
    }
  }

  get waiting(): number {
    return this.waiters.length;
  }
}
