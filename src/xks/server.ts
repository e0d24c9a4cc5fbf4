import http from 'node:http';
import { answerClientErrors } from '../api/client-error.js';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Services } from '../api/services.js';
import { ConfigError, readSecret } from '../config/load.js';
import type { XksConfig } from '../config/schema.js';
import { xksRequestHandler } from './handler.js';
import { loadKeystores } from './keystores.js';

export interface XksServer {
  port: number;
  close(): Promise<void>;
}

type XksTls = NonNullable<XksConfig['tls']>;

/**
 * TLS 1.2+ over HTTP/1.1 (node's https server speaks nothing newer, and ALPN says so). With
 * clientCaFile, a client certificate chained to that CA is required during the handshake
 * (requestCert + rejectUnauthorized: OpenSSL aborts it otherwise).
 */
function tlsOptions(t: XksTls): https.ServerOptions {
  if (t.clientCommonName && !t.clientCaFile) throw new ConfigError('xks.tls.clientCommonName: needs xks.tls.clientCaFile (the CA client certificates chain to)');
  const opts: https.ServerOptions = {
    cert: readSecret(undefined, t.certFile, 'xks.tls.certFile'),
    key: readSecret(undefined, t.keyFile, 'xks.tls.keyFile'),
    minVersion: 'TLSv1.2',
    ALPNProtocols: ['http/1.1'],
  };
  if (t.clientCaFile) {
    opts.ca = readSecret(undefined, t.clientCaFile, 'xks.tls.clientCaFile');
    opts.requestCert = true;
    opts.rejectUnauthorized = true;
  }
  return opts;
}

/** AWS KMS External Key Store proxy listener (API.md "AWS KMS External Key Store (XKS) proxy"). */
export async function startXks(config: XksConfig, s: Services): Promise<XksServer> {
  const keystores = loadKeystores(config);
  const handler = xksRequestHandler(s, keystores);
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => void handler(req, res);
  let server: http.Server;
  if (config.tls) {
    server = https.createServer(tlsOptions(config.tls), onRequest);
    const cn = config.tls.clientCommonName;
    if (cn)
      // Node has no certificate-verify callback, so the subject check runs as the first
      // listener of the finished handshake: a wrong CN is cut off before one byte of HTTP is read.
      server.prependListener('secureConnection', (socket: TLSSocket) => {
        const subject = socket.getPeerCertificate()?.subject;
        if (subject?.CN !== cn) {
          s.log.warn('xks: client certificate refused', { commonName: subject?.CN, expected: cn, remote: socket.remoteAddress });
          socket.destroy();
        }
      });
    server.on('tlsClientError', (e, socket) => s.log.debug('xks: TLS handshake failed', { error: e.message, remote: socket.remoteAddress }));
  } else {
    s.log.warn('xks: no xks.tls configured, serving plain HTTP; AWS KMS only talks HTTPS, so use this only behind a TLS-terminating proxy or in tests');
    server = http.createServer(onRequest);
  }
  answerClientErrors(server, { contentType: 'application/json', body: (message) => ({ errorName: 'ValidationException', errorMessage: message }) });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  s.log.info('xks proxy listening', {
    host: config.listen.host,
    port,
    tls: Boolean(config.tls),
    mtls: Boolean(config.tls?.clientCaFile),
    keystores: [...keystores.keys()].map((p) => `/${p}`),
  });
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      }),
  };
}
