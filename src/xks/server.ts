import type https from 'node:https';
import type { TLSSocket } from 'node:tls';
import type { Services } from '../api/services.js';
import { ConfigError, readSecret } from '../config/load.js';
import type { XksConfig } from '../config/schema.js';
import { startListener, tlsServerOptions, type Listener } from '../http/listener.js';
import { xksRequestHandler } from './handler.js';
import { loadKeystores } from './keystores.js';

export type XksServer = Listener;

type XksTls = NonNullable<XksConfig['tls']>;

/**
 * TLS 1.2+ over HTTP/1.1 (see tlsServerOptions). With clientCaFile, a client certificate chained
 * to that CA is required during the handshake (requestCert + rejectUnauthorized: OpenSSL aborts it otherwise).
 */
function tlsOptions(t: XksTls): https.ServerOptions {
  if (t.clientCommonName && !t.clientCaFile) throw new ConfigError('xks.tls.clientCommonName: needs xks.tls.clientCaFile (the CA client certificates chain to)');
  const opts = tlsServerOptions(t, 'xks');
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
  const cn = config.tls?.clientCommonName;
  const listener = await startListener(
    {
      name: 'xks',
      listen: config.listen,
      tls: config.tls ? tlsOptions(config.tls) : undefined,
      plainHttpWarning: 'xks: no xks.tls configured, serving plain HTTP; AWS KMS only talks HTTPS, so use this only behind a TLS-terminating proxy or in tests',
      clientErrors: { contentType: 'application/json', body: (message) => ({ errorName: 'ValidationException', errorMessage: message }) },
      log: s.log,
      prepare: (server) => {
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
      },
    },
    handler,
  );
  s.log.info('xks proxy listening', {
    host: config.listen.host,
    port: listener.port,
    tls: Boolean(config.tls),
    mtls: Boolean(config.tls?.clientCaFile),
    keystores: [...keystores.keys()].map((p) => `/${p}`),
  });
  return listener;
}
