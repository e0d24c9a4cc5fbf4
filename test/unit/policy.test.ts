import { expect } from 'chai';
import fc from 'fast-check';
import { addDays, DAY_MS } from '../../src/clock.js';
import type { KeyRecord } from '../../src/keys/model.js';
import { canRotate, isDue, MAX_PERIOD_DAYS, MIN_PERIOD_DAYS, nextRotationAt } from '../../src/rotation/policy.js';

const T0 = '2026-01-31T10:00:00.000Z';
const key = (over: Partial<KeyRecord> = {}): KeyRecord =>
  ({
    createdAt: T0,
    lastRotationAt: T0,
    rotationEnabled: true,
    rotationPeriodDays: 30,
    nextRotationAt: addDays(T0, 30),
    status: 'active',
    imported: false,
    allowRotation: true,
    ...over,
  }) as KeyRecord;

describe('unit: rotation policy math', () => {
  it('the contract\u2019s period bounds are 1 and 3650 days', () => {
    expect([MIN_PERIOD_DAYS, MAX_PERIOD_DAYS]).to.deep.equal([1, 3650]);
  });

  it('nextRotationDate = lastRotationDate + period, in whole days of 86 400 000 ms (property)', () => {
    fc.assert(
      fc.property(
        fc.date({ min: new Date('2000-01-01'), max: new Date('2100-01-01'), noInvalidDate: true }),
        fc.integer({ min: MIN_PERIOD_DAYS, max: MAX_PERIOD_DAYS }),
        (last, days) => {
          const next = nextRotationAt({ lastRotationAt: last.toISOString(), createdAt: T0 }, true, days)!;
          expect(Date.parse(next) - last.getTime()).to.equal(days * DAY_MS);
          expect(next).to.match(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('examples across month ends and leap days', () => {
    expect(nextRotationAt({ lastRotationAt: T0, createdAt: T0 }, true, 30)).to.equal('2026-03-02T10:00:00.000Z');
    expect(nextRotationAt({ lastRotationAt: '2028-02-28T00:00:00.000Z', createdAt: T0 }, true, 1)).to.equal('2028-02-29T00:00:00.000Z');
    expect(nextRotationAt({ lastRotationAt: '2026-12-31T23:59:59.999Z', createdAt: T0 }, true, 365)).to.equal('2027-12-31T23:59:59.999Z');
  });

  it('falls back to createdAt when the key never rotated', () => {
    expect(nextRotationAt({ lastRotationAt: null, createdAt: T0 }, true, 1)).to.equal('2026-02-01T10:00:00.000Z');
  });

  it('no next date when rotation is off or has no period', () => {
    expect(nextRotationAt({ lastRotationAt: T0, createdAt: T0 }, false, 30)).to.equal(null);
    expect(nextRotationAt({ lastRotationAt: T0, createdAt: T0 }, true, null)).to.equal(null);
    expect(nextRotationAt({ lastRotationAt: T0, createdAt: T0 }, true, 0)).to.equal(null);
  });

  it('isDue: rotation on, key active and the date reached (inclusive)', () => {
    const k = key();
    expect(isDue(k, addDays(T0, 29))).to.equal(false);
    expect(isDue(k, addDays(T0, 30))).to.equal(true);
    expect(isDue(k, addDays(T0, 300))).to.equal(true);
  });

  it('isDue: a disabled or pending-deletion key is suspended, rotation off never rotates', () => {
    const late = addDays(T0, 1000);
    expect(isDue(key({ status: 'disabled' }), late)).to.equal(false);
    expect(isDue(key({ status: 'pending_deletion' }), late)).to.equal(false);
    expect(isDue(key({ rotationEnabled: false }), late)).to.equal(false);
    expect(isDue(key({ nextRotationAt: null }), late)).to.equal(false);
  });

  it('isDue agrees with comparing instants (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: -10_000, max: 10_000 }), (minutes) => {
        const now = new Date(Date.parse(addDays(T0, 30)) + minutes * 60_000).toISOString();
        expect(isDue(key(), now)).to.equal(minutes >= 0);
      }),
    );
  });

  it('canRotate: generated keys always; imported keys only with allowRotation', () => {
    expect(canRotate(key())).to.equal(true);
    expect(canRotate(key({ imported: true, allowRotation: false }))).to.equal(false);
    expect(canRotate(key({ imported: true, allowRotation: true }))).to.equal(true);
  });
});
