import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { answerClientErrors } from '../api/client-error.js';
import type { Services } from '../api/services.js';
import { readSecret } from '../config/load.js';
import type { AwsConfig } from '../config/schema.js';
import type { Store } from '../store/store.js';
import { AwsRepository } from '../store/aws-repo.js';
import { loadCredentials } from './credentials.js';
import { awsRequestHandler } from './handler.js';

export interface AwsServer {
  port: number;
  close(): Promise<void>;
}

/** AWS KMS-compatible API listener (API.md "AWS KMS-compatible API"): its own port, plain HTTP or TLS 1.2+. */
export async function startAws(config: AwsConfig, s: Services, store: Store): Promise<AwsServer> {
  const credentials = loadCredentials(config);
  const handler = awsRequestHandler(s, credentials, new AwsRepository(store), { sigv4Region: config.sigv4Region, accountId: config.accountId });
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => void handler(req, res);
  let server: http.Server;
  if (config.tls) {
    server = https.createServer(
      {
        cert: readSecret(undefined, config.tls.certFile, 'aws.tls.certFile'),
        key: readSecret(undefined, config.tls.keyFile, 'aws.tls.keyFile'),
        minVersion: 'TLSv1.2',
        ALPNProtocols: ['http/1.1'],
      },
      onRequest,
    );
    server.on('tlsClientError', (e, socket) => s.log.debug('aws: TLS handshake failed', { error: e.message, remote: socket.remoteAddress }));
  } else {
    s.log.warn('aws: no aws.tls configured, serving the AWS KMS API over plain HTTP; use this only on loopback, behind a TLS-terminating proxy or in tests');
    server = http.createServer(onRequest);
  }
  answerClientErrors(server, { contentType: 'application/x-amz-json-1.1', body: (message) => ({ __type: 'SerializationException', message }) });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  s.log.info('aws kms api listening', { host: config.listen.host, port, tls: Boolean(config.tls), sigv4Region: config.sigv4Region, credentials: credentials.byAccessKeyId.size });
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      }),
  };
}
