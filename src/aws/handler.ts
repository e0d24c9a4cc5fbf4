import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Services } from '../api/services.js';
import type { AuditOutcome } from '../audit/audit-log.js';
import type { AwsRepository } from '../store/aws-repo.js';
import { claimedAccessKeyId, type AwsCredential, type AwsCredentials } from './credentials.js';
import { AwsError, errorBody, toAwsError } from './errors.js';
import { BodyTooLarge, readBody, sendThenCut } from '../http/read-body.js';
import { throughReread } from '../token/reread.js';
import { AwsOperations, type AuditNote, type AwsSettings, type Caller } from './operations.js';
import { AWS_OPERATIONS, parseJson, validateRequest, type AwsOperation } from './schemas.js';

/** The awsJson1_1 target prefix of every KMS operation. */
const TARGET_PREFIX = 'TrentService.';
const CONTENT_TYPE = 'application/x-amz-json-1.1';
/** At least what AWS accepts (4 KiB plaintext, 6 KiB blobs, 32 KiB policies, in base64). */
const MIN_AWS_BODY_BYTES = 64 * 1024;

/** The headers of every answer but its Content-Length. */
const answerHeaders = (requestId: string) => ({ 'content-type': CONTENT_TYPE, 'x-amzn-RequestId': requestId });

function send(res: ServerResponse, status: number, body: unknown, requestId: string): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { ...answerHeaders(requestId), 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * One AWS KMS API request: body → SigV4 → credential's principal → target → validation →
 * operation, then the audit record `kms.aws.<Operation>` (the answer leaves only after it is
 * committed, as on the main API) and the metrics. Every failure is an AWS error name.
 */
export function awsRequestHandler(s: Services, credentials: AwsCredentials, repo: AwsRepository, settings: AwsSettings) {
  const ops = new AwsOperations(s, repo, settings);
  const bodyLimit = Math.max(s.config.limits.maxBodyBytes, MIN_AWS_BODY_BYTES);

  /** The principal a credential maps to, with its current roles (config or kmsctl). */
  function callerOf(cred: AwsCredential, requestId: string): Caller {
    const principal = s.principals.list().find((p) => p.name === cred.principal);
    if (!principal) throw new AwsError('AccessDeniedException', `the principal ${cred.principal} of this access key does not exist`);
    if (!principal.organisations.includes(cred.scope.organisation))
      throw new AwsError('AccessDeniedException', `principal ${principal.name} is not a member of organisation ${cred.scope.organisation}`);
    if (!s.config.organisations.find((o) => o.identity === cred.scope.organisation)?.kmsEnabled)
      throw new AwsError('AccessDeniedException', `KMS is not enabled for organisation ${cred.scope.organisation}`);
    return { accessKeyId: cred.accessKeyId, principal, scope: cred.scope, requestId };
  }

  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const started = performance.now();
    const requestId = randomUUID();
    const target = typeof req.headers['x-amz-target'] === 'string' ? req.headers['x-amz-target'] : '';
    const named = target.startsWith(TARGET_PREFIX) ? target.slice(TARGET_PREFIX.length) : '';
    // Metrics and audit name only operations that exist (bounded label values).
    const operation = AWS_OPERATIONS.has(named) ? (named as AwsOperation) : undefined;
    const label = operation ?? 'unknown';
    const note: AuditNote = {};
    let cred: AwsCredential | undefined;
    let bodyRead = false;
    let principal: string | null = null;
    let outcome = 'success';
    const audit = (result: AuditOutcome, detail: Record<string, unknown>) =>
      s.audit.record({
        action: `kms.aws.${label}`,
        outcome: result,
        region: cred!.scope.region,
        keyIdentity: note.keyIdentity ?? null,
        keyVersion: note.keyVersion ?? null,
        principal,
        organisation: cred!.scope.organisation,
        requestId,
        detail: { accessKeyId: cred!.accessKeyId, ...detail },
      });
    try {
      const raw = await readBody(req, bodyLimit);
      bodyRead = true;
      const url = req.url ?? '/';
      const q = url.indexOf('?');
      const accessKeyId = await credentials.verifier.verify({
        method: req.method ?? 'POST',
        path: q < 0 ? url : url.slice(0, q),
        query: q < 0 ? '' : url.slice(q + 1),
        headers: req.headers,
        body: raw,
      });
      cred = credentials.byAccessKeyId.get(accessKeyId)!;
      principal = cred.principal;
      const caller = callerOf(cred, requestId);
      if (req.method !== 'POST' || !operation)
        throw new AwsError('UnknownOperationException', `unknown operation ${target.slice(0, 100) || '(no X-Amz-Target)'}; kmsd serves POST / with X-Amz-Target: TrentService.<Operation>`);
      // Another process may have rotated or disabled the key: bring the cache up to date first.
      await s.keys.fresh();
      const body = validateRequest(operation, parseJson(raw));
      // A token re-reading its object index (an object another process just made) is waited for, not a 503.
      const reply = await throughReread(() => ops.run(operation, caller, body, note));
      // Only read-only operations take DryRun, so having run it is harmless; AWS answers this error on success.
      if ((body as { DryRun?: boolean }).DryRun === true)
        throw new AwsError('DryRunOperationException', 'The request would have succeeded, but the DryRun parameter was set.');
      await audit('success', note.detail ?? {});
      send(res, 200, reply, requestId);
    } catch (e) {
      // A request rejected after its body was read (its signature, say) is filed under the credential it claims.
      if (!cred && bodyRead) cred = credentials.byAccessKeyId.get(claimedAccessKeyId(typeof req.headers.authorization === 'string' ? req.headers.authorization : undefined) ?? '');
      const err = toAwsError(e);
      // The body was left unread (see readBody): the answer must go out before the connection is cut.
      const cut = e instanceof BodyTooLarge && e.cut;
      outcome = err.errorName;
      if (err.errorName === 'KMSInternalException') s.log.error('aws request failed', { requestId, operation: label, error: (e as Error)?.stack ?? String(e) });
      else if (err.status >= 500) s.log.warn('aws request failed', { requestId, operation: label, errorName: err.errorName, message: err.message });
      else s.log.debug('aws request rejected', { requestId, operation: label, errorName: err.errorName, message: err.message });
      try {
        // A request naming no configured access key has no organisation to file it under.
        if (cred) {
          const denied = ['UnrecognizedClientException', 'InvalidSignatureException', 'MissingAuthenticationTokenException', 'AccessDeniedException'].includes(err.errorName);
          await audit(denied ? 'denied' : 'failure', { errorName: err.errorName, ...(note.detail ?? {}) });
        }
      } catch (auditErr) {
        s.log.error('aws audit record failed', { requestId, error: String(auditErr) });
        // Fail-closed like the main API (503 StoreUnavailable there) and XKS: retryable, not a bug.
        outcome = 'DependencyTimeoutException';
        send(res, 503, errorBody(new AwsError('DependencyTimeoutException', 'audit trail unavailable; retry')), requestId);
        return;
      }
      if (cut) sendThenCut(req, res, err.status, answerHeaders(requestId), JSON.stringify(errorBody(err)));
      else send(res, err.status, errorBody(err), requestId);
    } finally {
      s.metrics.observeAws(label, outcome, (performance.now() - started) / 1000);
    }
  };
}
