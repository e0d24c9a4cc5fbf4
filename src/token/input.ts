/**
 * pkcs11js passes an empty Buffer as a NULL pointer; SoftHSM2 answers CKR_ARGUMENTS_BAD and
 * leaves the operation active. A zero-length view into a real allocation is a non-NULL pointer
 * with length 0: the empty input the caller meant, still computed in the token.
 */
const NON_NULL_EMPTY = Buffer.alloc(1).subarray(0, 0);

export const input = (b: Buffer): Buffer => (b.length ? b : NON_NULL_EMPTY);
