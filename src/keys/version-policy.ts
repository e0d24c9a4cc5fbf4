import { invalidCiphertext, KmsError, validation } from '../errors.js';
import { findVersion, type KeyRecord, type KeyVersion, type VersionStatus } from './model.js';

/**
 * The one rule for which key versions are usable (API.md, "One rule for which versions are
 * usable"): a version is enabled when it is at or above the key's minDecryptionVersion (and not
 * disabled on its own), disabled otherwise. Every operation — encrypt, sign, hmac,
 * generate-data-key, re-encrypt, decrypt, verify, decrypt-asymmetric, export, public-key, XKS,
 * batch items — and the key resource's `versions[].status` ask these functions, so kmsd never
 * hands out output that it would refuse to take back.
 */
export function isVersionEnabled(key: KeyRecord, v: KeyVersion): boolean {
  return v.version >= key.minDecryptionVersion && v.status === 'enabled';
}

/** `versions[].status` of the key resource. */
export function versionStatus(key: KeyRecord, v: KeyVersion): VersionStatus {
  return isVersionEnabled(key, v) ? 'enabled' : 'disabled';
}

export function enabledVersions(key: KeyRecord): KeyVersion[] {
  return key.versions.filter((v) => isVersionEnabled(key, v));
}

function notAllowed(key: KeyRecord, v: KeyVersion): KmsError {
  return v.version < key.minDecryptionVersion
    ? new KmsError('VersionNotAllowed', `version ${v.version} is below minDecryptionVersion ${key.minDecryptionVersion}`)
    : new KmsError('VersionNotAllowed', `version ${v.version} is disabled`);
}

/**
 * The version an operation that makes new output uses: the latest, or the one the request
 * names in `field`. A version the key does not have → 400 ValidationError; a disabled one →
 * 422 VersionNotAllowed.
 */
export function versionForNew(key: KeyRecord, requested: number | undefined, field = 'keyVersion'): KeyVersion {
  const v = findVersion(key, requested ?? key.latestVersion);
  if (!v) throw validation(`${field}: key has no version ${requested}`);
  if (!isVersionEnabled(key, v)) throw notAllowed(key, v);
  return v;
}

/**
 * The version named inside a ciphertext, signature or MAC (or by an operation that takes one
 * back, such as decrypt-asymmetric): one the key does not have → 400 InvalidCiphertext; a
 * disabled one → 422 VersionNotAllowed.
 */
export function versionForExisting(key: KeyRecord, version: number, field: string): KeyVersion {
  const v = findVersion(key, version);
  if (!v) throw invalidCiphertext(`${field}: names version ${version}, which this key does not have`);
  if (!isVersionEnabled(key, v)) throw notAllowed(key, v);
  return v;
}
