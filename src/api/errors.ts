import type { NextFunction, Request, Response } from 'express';
import type { Logger } from 'winston';
import { KmsError, type ErrorCode } from '../errors.js';
import { TokenError } from '../token/errors.js';

/** The contract's status for each error code: the one place they are mapped. */
export const STATUS_OF: Record<ErrorCode, number> = {
  ValidationError: 400,
  InvalidCiphertext: 400,
  UnsupportedOperation: 400,
  Unauthenticated: 401,
  KmsNotEnabled: 403,
  Forbidden: 403,
  NotFound: 404,
  Conflict: 409,
  KeyStateConflict: 409,
  RotationLimitExceeded: 409,
  PayloadTooLarge: 413,
  DecryptionFailed: 422,
  VersionNotAllowed: 422,
  TooManyRequests: 429,
  RegionUnavailable: 503,
  StoreUnavailable: 503,
};

export interface MappedError {
  status: number;
  code: string;
  message: string;
  /** 429: seconds for the Retry-After header. */
  retryAfterSeconds?: number;
}

/** An audit record could not be committed: the request is refused (audit is fail-closed) and may be retried. */
export const AUDIT_UNAVAILABLE: MappedError = {
  status: 503,
  code: 'StoreUnavailable',
  message: 'audit trail unavailable: the record of this request could not be written; retry',
};

/** Turns anything thrown below the API into the contract's error; unknown errors are 500 (a bug). */
export function mapError(e: unknown, region?: string): MappedError {
  if (e instanceof KmsError)
    return e.retryAfterSeconds === undefined
      ? { status: STATUS_OF[e.code], code: e.code, message: e.message }
      : { status: STATUS_OF[e.code], code: e.code, message: e.message, retryAfterSeconds: e.retryAfterSeconds };
  if (e instanceof TokenError) {
    if (e.kind === 'unavailable')
      return { status: 503, code: 'RegionUnavailable', message: `region ${region ?? ''} is unavailable: ${e.message}`.replace('  ', ' ') };
    if (e.kind === 'unsupported') return { status: 400, code: 'UnsupportedOperation', message: e.message };
    // The token failed the call itself (CKR_GENERAL_ERROR / CKR_FUNCTION_FAILED): retryable, not a kmsd bug.
    if (e.ckr === 0x5 || e.ckr === 0x6) return { status: 503, code: 'RegionUnavailable', message: `${e.message}; retry shortly` };
    // A recorded object not visible to this process yet: the token's index is being re-read.
    if (e.kind === 'staleHandle') return { status: 503, code: 'RegionUnavailable', message: `${e.message}; retry shortly` };
  }
  const b = e as { type?: string; status?: number; message?: string };
  if (b && typeof b === 'object' && typeof b.type === 'string' && typeof b.status === 'number') {
    // body-parser errors
    if (b.type === 'entity.too.large') return { status: 413, code: 'PayloadTooLarge', message: 'request body exceeds limits.maxBodyBytes' };
    if (b.status < 500) return { status: 400, code: 'ValidationError', message: `malformed request body: ${b.message ?? b.type}` };
  }
  // Express/router client errors, e.g. a path parameter that is not valid percent-encoding (URIError, status 400)
  if (b && typeof b === 'object' && typeof b.status === 'number' && b.status >= 400 && b.status < 500)
    return { status: 400, code: 'ValidationError', message: `malformed request: ${b.message ?? 'bad request'}` };
  return { status: 500, code: 'InternalError', message: 'internal error' };
}

export function sendError(res: Response, err: MappedError, requestId: string): void {
  if (err.retryAfterSeconds !== undefined) res.set('Retry-After', String(err.retryAfterSeconds));
  res.status(err.status).json({ code: err.code, message: err.message, requestId });
}

/** Last-resort Express error handler (errors outside routes, e.g. body parsing before auth). */
export function errorHandler(log: Logger) {
  return (e: unknown, req: Request, res: Response, _next: NextFunction) => {
    const mapped = mapError(e);
    if (mapped.status >= 500) log.error('unhandled error', { requestId: res.locals.requestId, error: (e as Error)?.stack ?? String(e) });
    sendError(res, mapped, String(res.locals.requestId ?? ''));
  };
}
