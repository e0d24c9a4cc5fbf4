/**
 * The daemon's notion of now. With testing.clockControl the offset can be advanced (and is
 * shared through SQLite by every process on the data dir); otherwise it is the wall clock.
 * Domain code takes time only from here.
 *
 * Bounded: the offset is clamped to [0, MAX_CLOCK_OFFSET_MS] (the contract's 100 years) and
 * every date computed from the clock is clamped to MAX_DATE_MS, so no date the daemon makes
 * (audit time, rotation and deletion dates, token expiry) can leave RFC 3339's four-digit years
 * — beyond them `toISOString()` throws or changes format, which once bricked every request.
 */
export const DAY_MS = 86_400_000;
/** The most the testing clock may be ahead of the wall clock in total: 100 years of 365 days. */
export const MAX_CLOCK_OFFSET_MS = 100 * 365 * DAY_MS;
/** The last instant with a four-digit year: every date kmsd stores or sends is at most this. */
export const MAX_DATE_MS = Date.UTC(9999, 11, 31, 23, 59, 59, 999);

/** A millisecond time clamped into [0, MAX_DATE_MS]; NaN counts as the upper end (never an invalid date). */
export function clampDateMs(ms: number): number {
  if (Number.isNaN(ms)) return MAX_DATE_MS;
  return Math.min(Math.max(ms, 0), MAX_DATE_MS);
}

/** A clock offset clamped into [0, MAX_CLOCK_OFFSET_MS]; anything not finite counts as 0 when negative/NaN. */
export function clampOffsetMs(ms: number): number {
  if (Number.isNaN(ms)) return 0;
  return Math.min(Math.max(Math.round(ms), 0), MAX_CLOCK_OFFSET_MS);
}

export class Clock {
  private offsetMs = 0;
  /** The last ISO string made, by its millisecond: every audit record asks, often many per ms. */
  private lastIso = { ms: NaN, iso: '' };

  now(): Date {
    return new Date(this.nowMs());
  }
  nowMs(): number {
    return clampDateMs(Date.now() + this.offsetMs);
  }
  nowIso(): string {
    const ms = this.nowMs();
    if (ms !== this.lastIso.ms) this.lastIso = { ms, iso: new Date(ms).toISOString() };
    return this.lastIso.iso;
  }
  /** Now plus `ms` milliseconds as RFC 3339, clamped to MAX_DATE_MS. */
  isoAfterMs(ms: number): string {
    return new Date(clampDateMs(this.nowMs() + ms)).toISOString();
  }
  get offset(): number {
    return this.offsetMs;
  }
  /** Sets the offset, clamped into [0, 100 years] (a persisted value from an older version may be beyond). */
  setOffset(ms: number): void {
    this.offsetMs = clampOffsetMs(ms);
  }
}

/** `iso` plus `days` whole days, clamped to MAX_DATE_MS (so always a valid RFC 3339 string). */
export const addDays = (iso: string, days: number) => new Date(clampDateMs(Date.parse(iso) + days * DAY_MS)).toISOString();
