import { expect } from 'chai';
import fc from 'fast-check';
import { findVersion, rotationStatus, slugify, type KeyRecord } from '../../src/keys/model.js';

const SLUG = /^(?:[a-z0-9]+(?:-[a-z0-9]+)*)?$/;

describe('unit: slug rule (lower-case, runs outside [a-z0-9] → "-", trimmed)', () => {
  const examples: [string, string][] = [
    ['secrets-encryption', 'secrets-encryption'],
    ['Secrets Encryption', 'secrets-encryption'],
    ['  My Secrets__Key v2!! ', 'my-secrets-key-v2'],
    ['a--b', 'a-b'],
    ['--a--', 'a'],
    ['ÄÖÜ key', 'key'],
    ['café-2', 'caf-2'],
    ['UPPER123lower', 'upper123lower'],
    ['a.b/c:d', 'a-b-c-d'],
    ['!!!', ''],
    ['', ''],
    ['x', 'x'],
  ];
  for (const [name, slug] of examples)
    it(`${JSON.stringify(name)} → ${JSON.stringify(slug)}`, () => {
      expect(slugify(name)).to.equal(slug);
    });

  it('always yields [a-z0-9] runs joined by single dashes, and is idempotent (property)', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 60 }), (name) => {
        const s = slugify(name);
        expect(s).to.match(SLUG);
        expect(slugify(s)).to.equal(s);
      }),
      { numRuns: 1000 },
    );
  });

  it('keeps every letter and digit of an ASCII name, in order, lower-cased (property)', () => {
    fc.assert(
      fc.property(fc.string({ unit: fc.constantFrom(...'aZ09 -_.!/'.split('')), maxLength: 40 }), (name) => {
        expect(slugify(name).replace(/-/g, '')).to.equal(name.toLowerCase().replace(/[^a-z0-9]/g, ''));
      }),
      { numRuns: 500 },
    );
  });
});

describe('unit: key model helpers', () => {
  const key = (over: Partial<KeyRecord>): KeyRecord =>
    ({
      versions: [1, 2, 3].map((v) => ({ version: v, ckaId: `id${v}`, status: 'enabled', origin: 'generated', createdAt: '' })),
      rotationEnabled: true,
      status: 'active',
      ...over,
    }) as KeyRecord;

  it('findVersion finds each version and nothing outside 1..latest', () => {
    const k = key({});
    expect(findVersion(k, 1)!.ckaId).to.equal('id1');
    expect(findVersion(k, 3)!.ckaId).to.equal('id3');
    expect(findVersion(k, 0)).to.equal(undefined);
    expect(findVersion(k, 4)).to.equal(undefined);
    expect(findVersion(k, -1)).to.equal(undefined);
  });

  it('rotationStatus: enabled when on and active, suspended when on but not active, disabled when off', () => {
    expect(rotationStatus(key({}))).to.equal('enabled');
    expect(rotationStatus(key({ status: 'disabled' }))).to.equal('suspended');
    expect(rotationStatus(key({ status: 'pending_deletion' }))).to.equal('suspended');
    expect(rotationStatus(key({ rotationEnabled: false }))).to.equal('disabled');
    expect(rotationStatus(key({ rotationEnabled: false, status: 'disabled' }))).to.equal('disabled');
  });
});
