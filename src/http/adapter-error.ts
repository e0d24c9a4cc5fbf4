import { KmsError } from '../errors.js';
import { TokenError } from '../token/errors.js';
import { BodyTooLarge } from './read-body.js';

/** How an adapter with its own error table (the AWS KMS API, the XKS proxy) names what is thrown below it. */
export interface AdapterErrorTable<E extends Error, N extends string> {
  /** The adapter's own error class: its errors pass through as they are. */
  own: new (...args: never[]) => E;
  /** kmsd's domain error codes, as the adapter names them; a code not listed is internal. */
  fromKms: Partial<Record<KmsError['code'], N>>;
  make: (name: N, message: string) => E;
  /** The name for a request body over the listener's limit (BodyTooLarge). */
  tooLarge: N;
  /** The name for a token that is unavailable (or a stale handle): a retryable dependency failure. */
  unavailable: N;
  /** The name for anything else: a bug, answered without detail. */
  internal: N;
}

/** Anything thrown below an adapter → the adapter's error, by its table. */
export function toAdapterError<E extends Error, N extends string>(e: unknown, t: AdapterErrorTable<E, N>): E {
  if (e instanceof t.own) return e;
  if (e instanceof KmsError) {
    const name = t.fromKms[e.code];
    if (name) return t.make(name, e.message);
  }
  if (e instanceof BodyTooLarge) return t.make(t.tooLarge, e.message);
  if (e instanceof TokenError && (e.kind === 'unavailable' || e.kind === 'staleHandle')) return t.make(t.unavailable, `the HSM is unavailable: ${e.message}`);
  return t.make(t.internal, 'internal error');
}
