import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'winston';
import { readSecret } from '../config/load.js';
import { answerClientErrors, type ClientErrorReply } from './client-error.js';

/** A listener on its own port (the XKS proxy, the AWS KMS API): the port it got, and how to stop it. */
export interface Listener {
  port: number;
  /** Stops accepting, closes idle keep-alive connections and resolves once the open ones are done. */
  close(): Promise<void>;
}

/**
 * TLS 1.2+ over HTTP/1.1 (node's https server speaks nothing newer, and ALPN says so) with the
 * certificate and key of a `<section>.tls` config block; `section` names the keys in errors.
 * @throws ConfigError when a file cannot be read.
 */
export function tlsServerOptions(t: { certFile: string; keyFile: string }, section: string): https.ServerOptions {
  return {
    cert: readSecret(undefined, t.certFile, `${section}.tls.certFile`),
    key: readSecret(undefined, t.keyFile, `${section}.tls.keyFile`),
    minVersion: 'TLSv1.2',
    ALPNProtocols: ['http/1.1'],
  };
}

export interface ListenerSetup {
  /** Prefix of the log lines ('aws', 'xks'). */
  name: string;
  listen: { host: string; port: number };
  /** The TLS server's options (see tlsServerOptions); undefined: plain HTTP, after `plainHttpWarning` is logged. */
  tls: https.ServerOptions | undefined;
  plainHttpWarning: string;
  /** The adapter's error body for a request Node's HTTP parser refused. */
  clientErrors: ClientErrorReply;
  log: Logger;
  /** Runs on the server before it listens (e.g. a check of every TLS connection). */
  prepare?: (server: http.Server) => void;
}

/**
 * Creates the HTTP or HTTPS server of an adapter, answers refused requests with its JSON error,
 * and listens. Resolves once the port accepts.
 * @throws the listen error (e.g. EADDRINUSE).
 */
export async function startListener(setup: ListenerSetup, handler: (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void>): Promise<Listener> {
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => void handler(req, res);
  let server: http.Server;
  if (setup.tls) {
    server = https.createServer(setup.tls, onRequest);
    server.on('tlsClientError', (e, socket) => setup.log.debug(`${setup.name}: TLS handshake failed`, { error: e.message, remote: socket.remoteAddress }));
  } else {
    setup.log.warn(setup.plainHttpWarning);
    server = http.createServer(onRequest);
  }
  setup.prepare?.(server);
  answerClientErrors(server, setup.clientErrors);
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(setup.listen.port, setup.listen.host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      }),
  };
}
