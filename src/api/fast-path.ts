import { randomUUID } from 'node:crypto';
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import { requestIdFrom } from './context.js';
import type { Operation } from './handler.js';
import { cryptoRoutePath, type CryptoOperation } from './routes/crypto.js';
import type { Services } from './services.js';
import { jsonText } from './wire.js';

/** `/v1/kms/{region}/keys/{id}/{operation}` with nothing Express would have to decode or normalise. */
const ROUTE = /^\/v1\/kms\/([A-Za-z0-9._~-]+)\/keys\/([A-Za-z0-9._~-]+)\/([a-z-]+)$/;
const JSON_TYPE = /^application\/json\s*(?:;\s*charset="?utf-8"?\s*)?$/i;
const UTF8_BOM = 0xfeff;

interface FastRoute {
  run: Operation;
  /** Same label as Express's `req.route.path`, so metrics do not depend on which path served. */
  label: string;
}

/**
 * Serves the POST cryptographic operations (encrypt, decrypt, hmac, sign, …) straight from
 * node:http, in front of the Express application; everything else goes to Express.
 *
 * Why: the operations are the request volume of a KMS, and Express's per-request machinery
 * (router walk over every layer, request/response decoration, body-parser, res.json) costs
 * more than the operation itself: a one-route Express 5 echo serves ~3,000 req/s here where
 * node:http serves ~12,000 (measured, same machine, same load generator). The operation
 * itself is the same code either way (`operation()`: authentication, checks, the token call,
 * the audit record); only parsing and writing differ, and both paths are tested.
 *
 * Only the plainest requests take this path: POST, the exact path (no percent-encoding, no
 * query, no trailing slash), Content-Type application/json in UTF-8, a Content-Length within
 * limits.maxBodyBytes, no Content-Encoding or Transfer-Encoding. Anything else — and every
 * other route — is left to Express, which answers the unusual cases (413, 415, chunked or
 * compressed bodies, encoded path segments) exactly as before.
 */
export function withFastPath(s: Services, ops: CryptoOperation[], app: RequestListener): RequestListener {
  const routes = new Map<string, FastRoute>();
  for (const o of ops) if (o.method === 'post') routes.set(o.path, { run: o.run, label: cryptoRoutePath(o.path) });
  const limit = s.config.limits.maxBodyBytes;

  const eligible = (req: IncomingMessage): boolean => {
    const h = req.headers;
    if (h['transfer-encoding'] !== undefined) return false;
    if (h['content-encoding'] !== undefined && h['content-encoding'].toLowerCase() !== 'identity') return false;
    const type = h['content-type'];
    if (type === undefined || !JSON_TYPE.test(type)) return false;
    const length = h['content-length'];
    return length !== undefined && /^\d+$/.test(length) && Number(length) <= limit;
  };

  return (req, res) => {
    const m = req.method === 'POST' && req.url ? ROUTE.exec(req.url) : null;
    const route = m ? routes.get(m[3]!) : undefined;
    if (!route || !eligible(req)) {
      app(req, res);
      return;
    }
    serve(s, route, req, res, m![1]!, m![2]!);
  };
}

function serve(s: Services, route: FastRoute, req: IncomingMessage, res: ServerResponse, region: string, id: string): void {
  const started = performance.now();
  const requestId = requestIdFrom(req.headers, randomUUID);
  const send = (status: number, body: unknown, headers?: Record<string, string>) => {
    const json = jsonText(body);
    res.writeHead(status, {
      ...headers,
      'X-Request-Id': requestId,
      'Content-Type': 'application/json; charset=utf-8',
      'Content-Length': Buffer.byteLength(json),
    });
    res.end(json);
    s.metrics.observeRequest(route.label, 'POST', status, (performance.now() - started) / 1000);
  };

  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    let body: unknown;
    try {
      const text = (chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)).toString('utf8');
      // Like body-parser: an empty body is {}, a UTF-8 byte-order mark is dropped.
      body = text.length === 0 ? {} : JSON.parse(text.charCodeAt(0) === UTF8_BOM ? text.slice(1) : text);
    } catch (e) {
      // Rejected before authentication and not audited, exactly like body-parser's errors on the Express path.
      send(400, { code: 'ValidationError', message: `malformed request body: ${(e as Error).message}`, requestId });
      return;
    }
    route.run({ params: { region, id }, body, query: {}, headers: req.headers }, requestId).then(
      (out) => send(out.status, out.body, out.headers),
      (e: unknown) => {
        s.log.error('request failed', { requestId, error: (e as Error)?.stack ?? String(e) });
        send(500, { code: 'InternalError', message: 'internal error', requestId });
      },
    );
  });
}
