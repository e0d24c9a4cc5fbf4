import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Services } from '../api/services.js';
import { jsonText } from '../api/wire.js';
import type { AuditOutcome } from '../audit/audit-log.js';
import { errorBody, toXksError, XksError } from './errors.js';
import type { Keystore } from './keystores.js';
import { BodyTooLarge, readBody, sendThenCut } from '../http/read-body.js';
import { throughReread } from '../token/reread.js';
import { XksOperations, type AuditNote } from './operations.js';
import { matchRoute, type XksRoute } from './routes.js';
import { auditedMetadata, parseJson, validateBody } from './schemas.js';

/**
 * The body limit: the operator's limits.maxBodyBytes, but never below what the spec makes
 * every proxy accept (4,300 bytes of plaintext + 8,192 of AAD in base64 + ARNs ≈ 30 KiB).
 */
const MIN_XKS_BODY_BYTES = 64 * 1024;

/** The headers of every answer but its Content-Length. */
const answerHeaders = (requestId: string) => ({ 'content-type': 'application/json', 'x-request-id': requestId });

function send(res: ServerResponse, status: number, body: unknown, requestId: string, extra: Record<string, string> = {}): void {
  const text = jsonText(body);
  res.writeHead(status, { ...answerHeaders(requestId), 'content-length': Buffer.byteLength(text), ...extra });
  res.end(text);
}

/**
 * One XKS request: route → method → keystore → body → SigV4 → validation → operation, then
 * the audit record (the answer leaves only after it is committed, as on the main API) and the
 * metrics. Every failure is one of the spec's error names; plaintext is never logged.
 */
export function xksRequestHandler(s: Services, keystores: Map<string, Keystore>) {
  const ops = new XksOperations(s);
  const bodyLimit = Math.max(s.config.limits.maxBodyBytes, MIN_XKS_BODY_BYTES);

  async function run(route: XksRoute, ks: Keystore, body: Record<string, unknown>, note: AuditNote): Promise<unknown> {
    // Another process may have rotated or disabled the key: bring the cache up to date first.
    await s.keys.fresh();
    switch (route.operation) {
      case 'health':
        validateBody('health', body);
        return ops.health(ks);
      case 'metadata':
        validateBody('metadata', body);
        return ops.metadata(ks, route.keyId!, note);
      case 'encrypt':
        return ops.encrypt(ks, route.keyId!, validateBody('encrypt', body), note);
      case 'decrypt':
        return ops.decrypt(ks, route.keyId!, validateBody('decrypt', body), note);
    }
  }

  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const started = performance.now();
    const requestId = randomUUID();
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const route = matchRoute(path);
    const operation = route?.operation ?? 'unknown';
    const note: AuditNote = {};
    let ks: Keystore | undefined;
    let principal: string | null = null;
    let xks: Record<string, string> | undefined;
    let outcome = 'success';
    const auditAs = (store: Keystore, result: AuditOutcome, detail: Record<string, unknown> | null) =>
      s.audit.record({
        action: `kms.xks.${operation}`,
        outcome: result,
        region: store.region,
        keyIdentity: note.keyIdentity ?? null,
        keyVersion: note.keyVersion ?? null,
        principal,
        organisation: store.organisation,
        requestId,
        detail,
      });
    try {
      if (!route) throw new XksError('InvalidUriPathException', `no XKS operation at ${path.slice(0, 200)}`);
      // Checked before the keystore so a GET reveals nothing about which prefixes exist.
      if (req.method !== 'POST') throw new XksError('ValidationException', 'XKS operations accept POST only', 405);
      ks = keystores.get(route.prefix);
      if (!ks) throw new XksError('InvalidUriPathException', `no external key store at /${route.prefix}`);
      const raw = await readBody(req, bodyLimit);
      const accessKeyId = await ks.verifier.verify({ method: req.method, path, query: q < 0 ? '' : url.slice(q + 1), headers: req.headers, body: raw });
      principal = `xks:${accessKeyId}`;
      const body = parseJson(raw);
      xks = auditedMetadata(body);
      const keystore = ks;
      // A token re-reading its object index (an object another process just made) is waited for.
      const reply = await throughReread(() => run(route, keystore, body, note));
      await auditAs(ks, 'success', xks ? { xks } : null);
      send(res, 200, reply, requestId);
    } catch (e) {
      const err = toXksError(e);
      // The body was left unread (see readBody): the answer must go out before the connection is cut.
      const cut = e instanceof BodyTooLarge && e.cut;
      outcome = err.errorName;
      if (err.errorName === 'InternalException')
        s.log.error('xks request failed', { requestId, operation, kmsRequestId: xks?.kmsRequestId, error: (e as Error)?.stack ?? String(e) });
      else if (err.status >= 500) s.log.warn('xks request failed', { requestId, operation, kmsRequestId: xks?.kmsRequestId, errorName: err.errorName, message: err.message });
      else s.log.debug('xks request rejected', { requestId, operation, kmsRequestId: xks?.kmsRequestId, errorName: err.errorName, message: err.message });
      try {
        // Requests to no configured keystore have no organisation to file them under.
        if (ks)
          await auditAs(ks, [401, 403, 404].includes(err.status) ? 'denied' : 'failure', {
            errorName: err.errorName,
            status: err.status,
            ...(xks ? { xks } : {}),
          });
      } catch (auditErr) {
        s.log.error('xks audit record failed', { requestId, error: String(auditErr) });
        // Fail-closed like the main API (503 StoreUnavailable there): retryable, not a bug.
        outcome = 'DependencyTimeoutException';
        send(res, 503, errorBody(new XksError('DependencyTimeoutException', 'audit trail unavailable; retry')), requestId);
        return;
      }
      const extra: Record<string, string> = {};
      if (err.status === 405) extra.allow = 'POST';
      if (cut) sendThenCut(req, res, err.status, { ...answerHeaders(requestId), ...extra }, jsonText(errorBody(err)));
      else send(res, err.status, errorBody(err), requestId, extra);
    } finally {
      s.metrics.observeXks(operation, outcome, (performance.now() - started) / 1000);
    }
  };
}
