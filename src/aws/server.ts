import type { Services } from '../api/services.js';
import type { AwsConfig } from '../config/schema.js';
import { startListener, tlsServerOptions, type Listener } from '../http/listener.js';
import type { Store } from '../store/store.js';
import { AwsRepository } from '../store/aws-repo.js';
import { loadCredentials } from './credentials.js';
import { awsRequestHandler } from './handler.js';

export type AwsServer = Listener;

/** AWS KMS-compatible API listener (API.md "AWS KMS-compatible API"): its own port, plain HTTP or TLS 1.2+. */
export async function startAws(config: AwsConfig, s: Services, store: Store, o: { verifyOnThread?: boolean } = {}): Promise<AwsServer> {
  const credentials = loadCredentials(config, o);
  const handler = awsRequestHandler(s, credentials, new AwsRepository(store), { sigv4Region: config.sigv4Region, accountId: config.accountId });
  const listener = await startListener(
    {
      name: 'aws',
      listen: config.listen,
      tls: config.tls ? tlsServerOptions(config.tls, 'aws') : undefined,
      plainHttpWarning: 'aws: no aws.tls configured, serving the AWS KMS API over plain HTTP; use this only on loopback, behind a TLS-terminating proxy or in tests',
      clientErrors: { contentType: 'application/x-amz-json-1.1', body: (message) => ({ __type: 'SerializationException', message }) },
      log: s.log,
    },
    handler,
  );
  s.log.info('aws kms api listening', { host: config.listen.host, port: listener.port, tls: Boolean(config.tls), sigv4Region: config.sigv4Region, credentials: credentials.byAccessKeyId.size });
  return listener;
}
