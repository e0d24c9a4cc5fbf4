import { randomUUID } from 'node:crypto';
import type { RequestListener } from 'node:http';
import express, { type NextFunction, type Request, type Response } from 'express';
import { validation } from '../errors.js';
import { requestIdFrom } from './context.js';
import { errorHandler, sendError } from './errors.js';
import { auditRoutes } from './routes/audit.js';
import { byokRoutes } from './routes/byok.js';
import { cryptoOperations, cryptoRoutes, type CryptoOperation } from './routes/crypto.js';
import { withFastPath } from './fast-path.js';
import { keyRoutes } from './routes/keys.js';
import { systemRoutes } from './routes/system.js';
import type { Services } from './services.js';
import { jsonText } from './wire.js';

/** The daemon's request listener: the POST cryptographic operations' fast path in front of Express. */
export function createRequestListener(s: Services, version: string): RequestListener {
  const ops = cryptoOperations(s);
  return withFastPath(s, ops, createApp(s, version, ops));
}

/** Whether a request carries body bytes (a chunked body, or a non-zero Content-Length). */
function hasBody(req: Request): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/** application/json, application/*+json, or no Content-Type at all. */
function isJsonOrUntyped(type: string | undefined): boolean {
  return type === undefined || /^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i.test(type);
}

/** Builds the Express application of the KMS API (every route, including the cryptographic operations). */
export function createApp(s: Services, version: string, ops: CryptoOperation[] = cryptoOperations(s)): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  app.set('query parser', 'extended');

  app.use((req: Request, res: Response, next: NextFunction) => {
    // Every JSON body ends with a newline (jsonText), here as on the fast path and XKS.
    res.json = (body: unknown) => {
      if (!res.get('Content-Type')) res.set('Content-Type', 'application/json; charset=utf-8');
      return res.send(jsonText(body));
    };
    const id = requestIdFrom(req.headers, randomUUID);
    res.locals.requestId = id;
    res.setHeader('X-Request-Id', id);
    const started = performance.now();
    res.on('finish', () => {
      const route = (req.route?.path as string | undefined) ?? 'unmatched';
      s.metrics.observeRequest(route, req.method, res.statusCode, (performance.now() - started) / 1000);
    });
    next();
  });

  // JSON bodies only; anything larger than limits.maxBodyBytes is 413 PayloadTooLarge.
  // A body with no Content-Type at all is read as JSON too (the contract: JSON in, JSON out).
  app.use(express.json({ limit: s.config.limits.maxBodyBytes, strict: false, type: (req) => isJsonOrUntyped(req.headers['content-type']) }));
  // A body the JSON parser did not take (another Content-Type, e.g. curl -d's form type) is
  // refused, not read as "no fields": PATCH …/rotation {"keyRotationEnabled": true} sent as a form
  // used to disable rotation (an absent boolean is false). Requests without a body are unaffected.
  app.use((req: Request, _res: Response, next: NextFunction) => {
    if (req.body !== undefined || !hasBody(req)) return next();
    const type = req.headers['content-type'];
    next(validation(`body: send JSON with Content-Type: application/json (got ${type ? `Content-Type: ${type.slice(0, 100)}` : 'no Content-Type'})`));
  });

  // Cryptographic operations first: they are the hot path, and Express tries routes in order.
  app.use(cryptoRoutes(ops));
  app.use(systemRoutes(s, version));
  app.use(auditRoutes(s));
  app.use(byokRoutes(s));
  app.use(keyRoutes(s));

  app.use((_req: Request, res: Response) => {
    sendError(res, { status: 404, code: 'NotFound', message: 'no such route' }, String(res.locals.requestId));
  });
  app.use(errorHandler(s.log));
  return app;
}
