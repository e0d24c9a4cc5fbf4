/**
 * The daemon's notion of now. With testing.clockControl the offset can be advanced (and is
 * shared through SQLite by every process on the data dir); otherwise it is the wall clock.
 * Domain code takes time only from here.
 */
export class Clock {
  private offsetMs = 0;
  /** The last ISO string made, by its millisecond: every audit record asks, often many per ms. */
  private lastIso = { ms: NaN, iso: '' };

  now(): Date {
    return new Date(Date.now() + this.offsetMs);
  }
  nowMs(): number {
    return Date.now() + this.offsetMs;
  }
  nowIso(): string {
    const ms = this.nowMs();
    if (ms !== this.lastIso.ms) this.lastIso = { ms, iso: new Date(ms).toISOString() };
    return this.lastIso.iso;
  }
  get offset(): number {
    return this.offsetMs;
  }
  setOffset(ms: number): void {
    this.offsetMs = ms;
  }
}

export const DAY_MS = 86_400_000;
export const addDays = (iso: string, days: number) => new Date(Date.parse(iso) + days * DAY_MS).toISOString();
