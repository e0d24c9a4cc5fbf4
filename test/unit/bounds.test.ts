import { expect } from 'chai';
import fc from 'fast-check';
import { auditRecordBytes, boundAuditEvent, MAX_AUDIT_RECORD_BYTES } from '../../src/audit/audit-log.js';
import { addDays, Clock, MAX_CLOCK_OFFSET_MS, MAX_DATE_MS } from '../../src/clock.js';
import { auditedMetadata } from '../../src/xks/schemas.js';

const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

describe('unit: bounded clock and bounded audit records', () => {
  it('the clock offset is clamped to [0, 100 years] whatever was persisted, and now is always RFC 3339', () => {
    fc.assert(
      fc.property(fc.oneof(fc.double(), fc.constantFrom(Infinity, -Infinity, NaN, 8.64e15 * 3, -1e20)), (offset) => {
        const c = new Clock();
        c.setOffset(offset);
        expect(c.offset).to.be.at.least(0).and.at.most(MAX_CLOCK_OFFSET_MS);
        expect(c.nowIso()).to.match(RFC3339);
        expect(Number.isFinite(c.now().getTime())).to.equal(true);
      }),
    );
    expect(MAX_CLOCK_OFFSET_MS).to.equal(100 * 365 * 86_400_000);
  });

  it('a date computed from the clock plus any duration stays representable (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 10_000_000 }), fc.oneof(fc.integer({ min: 0, max: 1e9 }), fc.constant(Number.MAX_SAFE_INTEGER)), (offsetDays, days) => {
        const c = new Clock();
        c.setOffset(offsetDays * 86_400_000);
        const d = addDays(c.nowIso(), days);
        expect(d).to.match(RFC3339);
        expect(Date.parse(d)).to.be.at.most(MAX_DATE_MS);
        expect(c.isoAfterMs(days * 1000)).to.match(RFC3339);
      }),
    );
  });

  it('every audit record fits in 2 KB, whatever a source put into it (property)', () => {
    const big = fc.string({ maxLength: 20_000 });
    fc.assert(
      fc.property(big, big, big, big, fc.dictionary(fc.string({ maxLength: 50 }), big, { maxKeys: 20 }), (region, key, org, requestId, detail) => {
        const e = boundAuditEvent({
          action: 'kms.encrypt',
          outcome: 'denied',
          region,
          keyIdentity: key,
          keyVersion: '1',
          principal: 'p',
          organisation: org,
          requestId,
          detail,
          time: '2026-01-01T00:00:00.000Z',
        });
        expect(auditRecordBytes(e)).to.be.at.most(MAX_AUDIT_RECORD_BYTES);
      }),
      { numRuns: 50 },
    );
    expect(MAX_AUDIT_RECORD_BYTES).to.equal(2048);
  });

  it('XKS requestMetadata kept for the audit is bounded in total, not only per field', () => {
    const long = 'x'.repeat(5000);
    const m = auditedMetadata({ requestMetadata: { kmsRequestId: long, awsPrincipalArn: long, kmsOperation: long, kmsKeyArn: long } })!;
    expect(Buffer.byteLength(JSON.stringify(m))).to.be.at.most(1400);
    expect(m.kmsRequestId!.length).to.be.at.most(128);
  });
});
