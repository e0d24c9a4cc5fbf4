import type { IncomingMessage, ServerResponse } from 'node:http';

/** Past `limit × DRAIN_FACTOR` an oversized body is not drained any more: the connection is cut. */
const DRAIN_FACTOR = 16;
/** How long a cut connection stays open after its answer, so the client reads it (a reset drops unread data). */
const CUT_GRACE_MS = 1000;

/** A request body went past its limit; the adapter answers it with its own error name (see toAdapterError). */
export class BodyTooLarge extends Error {
  constructor(
    limit: number,
    /** The body went past limit × DRAIN_FACTOR: reading stopped and the rest is never read (answer with sendThenCut). */
    readonly cut: boolean,
  ) {
    super(`request body exceeds ${limit} bytes`);
  }
}

/**
 * Reads the body up to `limit` bytes. An oversized body is drained (and dropped) before the error
 * answer, because closing a socket with unread data makes TCP reset it and the client would never
 * see the answer. Past `limit × DRAIN_FACTOR` reading stops at once (the request is paused) and
 * the answer goes out while the client is still sending (see sendThenCut).
 * @throws BodyTooLarge past `limit`; the stream's own error as it is.
 */
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= limit) chunks.push(c);
      else if (size > limit * DRAIN_FACTOR && !req.isPaused()) {
        req.pause();
        reject(new BodyTooLarge(limit, true));
      }
    });
    req.on('end', () => (size > limit ? reject(new BodyTooLarge(limit, false)) : resolve(Buffer.concat(chunks))));
    req.on('error', reject);
  });
}

/**
 * The answer to a request whose body is no longer read (BodyTooLarge.cut): the whole reply is
 * written (its Content-Length complete, so the client has its answer), and the connection is
 * closed only a moment later. Ending at once closed a socket with unread data, a reset that
 * reached the client before the reply: a 10 MB body got ECONNRESET and no 413.
 * `headers` are the adapter's own (Content-Type, request id); Content-Length and Connection are added.
 */
export function sendThenCut(req: IncomingMessage, res: ServerResponse, status: number, headers: Record<string, string>, text: string): void {
  res.writeHead(status, { ...headers, 'content-length': Buffer.byteLength(text), connection: 'close' });
  res.write(text);
  setTimeout(() => {
    res.end();
    req.destroy();
  }, CUT_GRACE_MS).unref();
}
