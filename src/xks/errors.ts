import type { KmsError } from '../errors.js';
import { toAdapterError } from '../http/adapter-error.js';

/**
 * The XKS proxy spec's error table ("Error codes"): each name and its HTTP status. The XKS
 * adapter answers only with these; kmsd's own codes never leak onto this listener.
 */
export const XKS_STATUS = {
  ValidationException: 400,
  InvalidStateException: 400,
  InvalidCiphertextException: 400,
  InvalidKeyUsageException: 400,
  AuthenticationFailedException: 401,
  AccessDeniedException: 403,
  KeyNotFoundException: 404,
  InvalidUriPathException: 404,
  ThrottlingException: 429,
  UnsupportedOperationException: 501,
  DependencyTimeoutException: 503,
  InternalException: 500,
} as const;

export type XksErrorName = keyof typeof XKS_STATUS;

export class XksError extends Error {
  constructor(
    readonly errorName: XksErrorName,
    message: string,
    /** Overrides the table's status (405 for a GET on an operation, which the table has no name for). */
    readonly status: number = XKS_STATUS[errorName],
  ) {
    super(message);
    this.name = errorName;
  }
}

export const xksValidation = (m: string) => new XksError('ValidationException', m);
export const xksAuthFailed = (m: string) => new XksError('AuthenticationFailedException', m);
export const xksInvalidCiphertext = (m: string) => new XksError('InvalidCiphertextException', m);

/** kmsd's domain errors, as the XKS spec names them. */
const FROM_KMS: Partial<Record<KmsError['code'], XksErrorName>> = {
  ValidationError: 'ValidationException',
  InvalidCiphertext: 'InvalidCiphertextException',
  DecryptionFailed: 'InvalidCiphertextException',
  UnsupportedOperation: 'InvalidKeyUsageException',
  KeyStateConflict: 'InvalidStateException',
  // A version below minDecryptionVersion or disabled is key state, not a corrupt ciphertext.
  VersionNotAllowed: 'InvalidStateException',
  NotFound: 'KeyNotFoundException',
  RegionUnavailable: 'DependencyTimeoutException',
  // The spec's retryable "a dependency did not answer in time" (HTTP 503).
  StoreUnavailable: 'DependencyTimeoutException',
  TooManyRequests: 'ThrottlingException',
  KmsNotEnabled: 'InvalidStateException',
};

/** Anything thrown below the adapter → the spec's error; unknown errors are InternalException (a bug). */
export const toXksError = (e: unknown): XksError =>
  toAdapterError(e, { own: XksError, fromKms: FROM_KMS, make: (name, message) => new XksError(name, message), tooLarge: 'UnsupportedOperationException', unavailable: 'DependencyTimeoutException', internal: 'InternalException' });

/** The spec's error body; errorMessage is printable ASCII below 512 characters. */
export function errorBody(e: XksError): { errorName: string; errorMessage: string } {

  const msg = e.message.replace(/[^\x20-\x7e]/g, '?').slice(0, 511);
  return { errorName: e.errorName, errorMessage: msg };
}
