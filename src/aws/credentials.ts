import { ConfigError, readSecret } from '../config/load.js';
import type { AwsConfig } from '../config/schema.js';
import type { Scope } from '../keys/key-service.js';
import { SigV4Verifier, type SigV4Failure } from '../xks/sigv4.js';
import { ThreadedSigV4Verifier, type RequestVerifier } from '../xks/sigv4-thread.js';
import { AwsError } from './errors.js';

/** The AWS KMS API signs for this service name. */
export const AWS_KMS_SERVICE = 'kms';

/** One configured access key: the principal whose roles apply and the scope its keys live in. */
export interface AwsCredential {
  accessKeyId: string;
  principal: string;
  scope: Scope;
}

export interface AwsCredentials {
  byAccessKeyId: Map<string, AwsCredential>;
  verifier: RequestVerifier;
}

/**
 * Builds the credentials from the validated `aws` block, reading each secret from its env
 * variable or file. A duplicate access key id would make a request's secret ambiguous: it stops
 * the daemon at start. SigV4 is verified by the AWS SDK's own signer (shared with XKS) for
 * service `kms` and the configured region; an unknown access key is UnrecognizedClientException,
 * every other failure InvalidSignatureException (AWS's names). `verifyOnThread`: the verification
 * runs on a thread of its own (xks/sigv4-thread.ts), for a process that leaves a core idle.
 */
export function loadCredentials(config: AwsConfig, o: { verifyOnThread?: boolean } = {}): AwsCredentials {
  const byAccessKeyId = new Map<string, AwsCredential>();
  const secrets = config.credentials.map((c, i) => {
    const where = `aws.credentials[${i}]`;
    if (byAccessKeyId.has(c.accessKeyId)) throw new ConfigError(`${where}.accessKeyId: duplicate ${c.accessKeyId}`);
    byAccessKeyId.set(c.accessKeyId, {
      accessKeyId: c.accessKeyId,
      principal: c.principal,
      scope: { organisation: c.organisation, region: c.region, project: c.project ?? '' },
    });
    return { accessKeyId: c.accessKeyId, secretAccessKey: readSecret(c.secretAccessKeyEnv, c.secretAccessKeyFile, `${where} secret access key`) };
  });
  const fail = (kind: SigV4Failure, message: string) =>
    kind === 'unknownAccessKey'
      ? new AwsError('UnrecognizedClientException', 'The security token included in the request is invalid.')
      : /missing or malformed Authorization/.test(message)
        ? new AwsError('MissingAuthenticationTokenException', `Missing Authentication Token: ${message}`)
        : new AwsError('InvalidSignatureException', `The request signature we calculated does not match the signature you provided: ${message}`);
  const options = { service: AWS_KMS_SERVICE, fail };
  const verifier = o.verifyOnThread ? new ThreadedSigV4Verifier(secrets, config.sigv4Region, options) : new SigV4Verifier(secrets, config.sigv4Region, options);
  return { byAccessKeyId, verifier };
}

/** The access key id an Authorization header claims (not yet verified), for the audit of a rejected request. */
export function claimedAccessKeyId(authorization: string | undefined): string | undefined {
  return authorization ? /Credential=([A-Z0-9]{16,128})\//.exec(authorization)?.[1] : undefined;
}
