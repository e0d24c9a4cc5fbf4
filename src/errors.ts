/**
 * Typed domain errors. Services throw these; api/errors.ts maps each kind to the
 * contract's HTTP status and error code in one place, xks/errors.ts to the XKS names.
 */
export type ErrorCode =
  | 'ValidationError'
  | 'InvalidCiphertext'
  | 'UnsupportedOperation'
  | 'Unauthenticated'
  | 'KmsNotEnabled'
  | 'Forbidden'
  | 'NotFound'
  | 'Conflict'
  | 'KeyStateConflict'
  | 'RotationLimitExceeded'
  | 'PayloadTooLarge'
  | 'DecryptionFailed'
  | 'VersionNotAllowed'
  | 'RegionUnavailable'
  | 'StoreUnavailable'
  | 'TooManyRequests';

export class KmsError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** TooManyRequests: when to come back (the Retry-After header), in whole seconds ≥ 1. */
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
    this.name = code;
  }
}

export const validation = (msg: string) => new KmsError('ValidationError', msg);
export const notFound = (msg = 'not found') => new KmsError('NotFound', msg);
export const forbidden = (msg: string) => new KmsError('Forbidden', msg);
export const unsupported = (msg: string) => new KmsError('UnsupportedOperation', msg);
export const keyState = (msg: string) => new KmsError('KeyStateConflict', msg);
export const invalidCiphertext = (msg: string) => new KmsError('InvalidCiphertext', msg);
export const decryptionFailed = (msg = 'decryption failed: wrong key, wrong aad or tampered ciphertext') =>
  new KmsError('DecryptionFailed', msg);
/** The metadata store cannot take the read or write now (e.g. PostgreSQL failover in progress): retry. */
export const storeUnavailable = (why: string) => new KmsError('StoreUnavailable', `the metadata store is unavailable: ${why}; retry`);
export const regionUnavailable = (region: string, why: string) =>
  new KmsError('RegionUnavailable', `region ${region} is unavailable: ${why}`);
/** 429: an organisation over its share of expensive token work or over a storage limit; the message says which. */
export const tooManyRequests = (msg: string, retryAfterSeconds: number) =>
  new KmsError('TooManyRequests', msg, Math.max(1, Math.ceil(retryAfterSeconds)));
