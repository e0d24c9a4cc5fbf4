import pkcs11js from 'pkcs11js';

/** A PKCS#11 failure, classified so services can react without knowing CKR_* values. */
export type TokenErrorKind =
  | 'unavailable' // token missing, removed, logged out, device error: the region is down
  | 'staleHandle' // an object handle no longer names an object (destroyed elsewhere)
  | 'badCiphertext' // decryption / tag check failed
  | 'badSignature'
  | 'badWrappedKey' // unwrap failed: wrong key, wrong padding, wrong length
  | 'unsupported' // mechanism or parameters not offered by this token
  | 'other';

export class TokenError extends Error {
  constructor(
    readonly kind: TokenErrorKind,
    readonly ckr: number,
    message: string,
    /**
     * Set when the failure is only that the token's object index is being re-read (an object
     * another process created is not visible yet): settles when the re-read is over, and the
     * caller should wait for it and try again (see `throughReread`).
     */
    readonly rereading?: Promise<void>,
  ) {
    super(message);
    this.name = 'TokenError';
  }
}

const KIND_BY_CKR: Record<number, TokenErrorKind> = {
  0x30: 'unavailable', // CKR_DEVICE_ERROR
  0x31: 'unavailable', // CKR_DEVICE_MEMORY
  0x32: 'unavailable', // CKR_DEVICE_REMOVED
  0xe0: 'unavailable', // CKR_TOKEN_NOT_PRESENT
  0xe1: 'unavailable', // CKR_TOKEN_NOT_RECOGNIZED
  0xb0: 'unavailable', // CKR_SESSION_CLOSED
  0xb3: 'unavailable', // CKR_SESSION_HANDLE_INVALID
  0x101: 'unavailable', // CKR_USER_NOT_LOGGED_IN
  0x190: 'unavailable', // CKR_CRYPTOKI_NOT_INITIALIZED
  0x82: 'staleHandle', // CKR_OBJECT_HANDLE_INVALID
  0x60: 'staleHandle', // CKR_KEY_HANDLE_INVALID
  0x40: 'badCiphertext', // CKR_ENCRYPTED_DATA_INVALID
  0x41: 'badCiphertext', // CKR_ENCRYPTED_DATA_LEN_RANGE
  0xc0: 'badSignature', // CKR_SIGNATURE_INVALID
  0xc1: 'badSignature', // CKR_SIGNATURE_LEN_RANGE
  0x110: 'badWrappedKey', // CKR_WRAPPED_KEY_INVALID
  0x112: 'badWrappedKey', // CKR_WRAPPED_KEY_LEN_RANGE
  0x20: 'badWrappedKey', // CKR_DATA_INVALID (OAEP decoding failure on SoftHSM2)
  0x21: 'badWrappedKey', // CKR_DATA_LEN_RANGE
  0x70: 'unsupported', // CKR_MECHANISM_INVALID
  0x71: 'unsupported', // CKR_MECHANISM_PARAM_INVALID
  0x7: 'unsupported', // CKR_ARGUMENTS_BAD (SoftHSM2: OAEP with SHA-2)
  0x68: 'unsupported', // CKR_KEY_FUNCTION_NOT_PERMITTED
  0x63: 'unsupported', // CKR_KEY_TYPE_INCONSISTENT
};

/** Turns whatever pkcs11js threw into a TokenError (pass-through for ones already classified). */
export function toTokenError(e: unknown, what: string): TokenError {
  if (e instanceof TokenError) return e;
  if (e instanceof pkcs11js.Pkcs11Error) {
    const kind = KIND_BY_CKR[e.code] ?? 'other';
    return new TokenError(kind, e.code, `${what}: ${e.method || 'PKCS#11'} failed with ${ckrName(e)}`);
  }
  const msg = e instanceof Error ? e.message : String(e);
  return new TokenError('other', -1, `${what}: ${msg}`);
}

function ckrName(e: { code: number; message: string }): string {
  const m = /CKR_[A-Z_]+/.exec(e.message);
  return m ? m[0] : `0x${e.code.toString(16)}`;
}
