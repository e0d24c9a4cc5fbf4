import type { KmsError } from '../errors.js';
import { toAdapterError } from '../http/adapter-error.js';

/**
 * The AWS KMS error names this API answers with (AWS KMS API Reference, "Errors" of each
 * operation, plus the common errors) and their HTTP status. kmsd's own codes never leak onto
 * this listener: every failure is one of these.
 */
export const AWS_STATUS = {
  // authentication and protocol (common errors)
  UnrecognizedClientException: 400,
  InvalidSignatureException: 400,
  MissingAuthenticationTokenException: 400,
  AccessDeniedException: 400,
  UnknownOperationException: 400,
  SerializationException: 400,
  ValidationException: 400,
  RequestEntityTooLargeException: 413,
  ThrottlingException: 400,
  // KMS errors
  NotFoundException: 400,
  DisabledException: 400,
  KMSInvalidStateException: 400,
  InvalidCiphertextException: 400,
  IncorrectKeyException: 400,
  InvalidKeyUsageException: 400,
  KMSInvalidSignatureException: 400,
  KMSInvalidMacException: 400,
  UnsupportedOperationException: 400,
  AlreadyExistsException: 400,
  InvalidAliasNameException: 400,
  InvalidArnException: 400,
  InvalidMarkerException: 400,
  TagException: 400,
  LimitExceededException: 400,
  InvalidImportTokenException: 400,
  ExpiredImportTokenException: 400,
  IncorrectKeyMaterialException: 400,
  ConflictException: 400,
  DryRunOperationException: 412,
  DependencyTimeoutException: 503,
  KMSInternalException: 500,
} as const;

export type AwsErrorName = keyof typeof AWS_STATUS;

export class AwsError extends Error {
  readonly status: number;
  constructor(
    readonly errorName: AwsErrorName,
    message: string,
  ) {
    super(message);
    this.name = errorName;
    this.status = AWS_STATUS[errorName];
  }
}

export const awsValidation = (m: string) => new AwsError('ValidationException', m);

/** kmsd's domain errors, as AWS KMS names them. Key state is checked by the adapter first (disabled vs pending deletion). */
const FROM_KMS: Record<KmsError['code'], AwsErrorName> = {
  ValidationError: 'ValidationException',
  InvalidCiphertext: 'InvalidCiphertextException',
  DecryptionFailed: 'InvalidCiphertextException',
  UnsupportedOperation: 'UnsupportedOperationException',
  Unauthenticated: 'UnrecognizedClientException',
  KmsNotEnabled: 'AccessDeniedException',
  Forbidden: 'AccessDeniedException',
  NotFound: 'NotFoundException',
  Conflict: 'ConflictException',
  KeyStateConflict: 'KMSInvalidStateException',
  // A version below minDecryptionVersion is key state, not a corrupt ciphertext.
  VersionNotAllowed: 'KMSInvalidStateException',
  RotationLimitExceeded: 'LimitExceededException',
  PayloadTooLarge: 'RequestEntityTooLargeException',
  RegionUnavailable: 'DependencyTimeoutException',
  TooManyRequests: 'ThrottlingException',
  StoreUnavailable: 'DependencyTimeoutException',
};

/** Anything thrown below the adapter → an AWS error; unknown errors are KMSInternalException (a bug). */
export const toAwsError = (e: unknown): AwsError =>
  toAdapterError(e, { own: AwsError, fromKms: FROM_KMS, make: (name, message) => new AwsError(name, message), tooLarge: 'RequestEntityTooLargeException', unavailable: 'DependencyTimeoutException', internal: 'KMSInternalException' });

/** The awsJson1_1 error body. */
export function errorBody(e: AwsError): { __type: string; message: string } {
  return { __type: e.errorName, message: e.message.replace(/[^\x20-\x7e]/g, '?').slice(0, 1024) };
}
