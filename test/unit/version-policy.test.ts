import { expect } from 'chai';
import fc from 'fast-check';
import type { KeyRecord, KeyVersion } from '../../src/keys/model.js';
import { enabledVersions, isVersionEnabled, versionForExisting, versionForNew, versionStatus } from '../../src/keys/version-policy.js';

function keyWith(latest: number, min: number): KeyRecord {
  const versions: KeyVersion[] = Array.from({ length: latest }, (_, i) => ({
    version: i + 1,
    ckaId: `id-${i + 1}`,
    status: 'enabled',
    origin: 'generated',
    createdAt: '2026-01-01T00:00:00.000Z',
  }));
  return { latestVersion: latest, minDecryptionVersion: min, versions } as unknown as KeyRecord;
}

const code = (f: () => unknown): string | undefined => {
  try {
    f();
    return undefined;
  } catch (e) {
    return (e as { code?: string }).code;
  }
};

describe('unit: the one rule for which versions are usable (keys/version-policy)', () => {
  it('a version is enabled exactly when at or above minDecryptionVersion; every question agrees', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 20 }).chain((latest) => fc.tuple(fc.constant(latest), fc.integer({ min: 1, max: latest }), fc.integer({ min: 1, max: 25 }))), ([latest, min, n]) => {
        const key = keyWith(latest, min);
        const v = key.versions[n - 1];
        if (!v) {
          expect(code(() => versionForNew(key, n))).to.equal('ValidationError');
          expect(code(() => versionForExisting(key, n, 'ciphertext'))).to.equal('InvalidCiphertext');
          return;
        }
        const enabled = n >= min;
        expect(isVersionEnabled(key, v)).to.equal(enabled);
        expect(versionStatus(key, v)).to.equal(enabled ? 'enabled' : 'disabled');
        expect(enabledVersions(key).includes(v)).to.equal(enabled);
        // What new output may use is exactly what may be taken back.
        expect(code(() => versionForNew(key, n))).to.equal(enabled ? undefined : 'VersionNotAllowed');
        expect(code(() => versionForExisting(key, n, 'ciphertext'))).to.equal(enabled ? undefined : 'VersionNotAllowed');
        expect(versionForNew(key, undefined).version).to.equal(latest);
      }),
    );
  });
});
