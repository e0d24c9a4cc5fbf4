import type { Server } from 'node:http';
import type { Duplex } from 'node:stream';

/** The error body a listener answers a request its HTTP parser refused with, and its Content-Type. */
export interface ClientErrorReply {
  contentType: string;
  body: (message: string) => unknown;
}

/** The main API's: the contract's error shape (no request id: the request never got that far). */
export const KMS_CLIENT_ERROR: ClientErrorReply = {
  contentType: 'application/json; charset=utf-8',
  body: (message) => ({ code: 'ValidationError', message, requestId: '' }),
};

/**
 * Answers a request that Node's HTTP parser refused (a control character in a header value, a
 * malformed request line, headers over the size limit) with a JSON error, instead of Node's bare
 * `400 Bad Request` with no body: every error of the API is JSON with a code. A reset or timed-out
 * connection, or one whose response has already begun, is only closed.
 */
export function answerClientErrors(server: Server, reply: ClientErrorReply): void {
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    const started = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent;
    if (err.code === 'ECONNRESET' || !socket.writable || started) {
      socket.destroy();
      return;
    }
    const [status, message] =
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? ['408 Request Timeout', 'the request was not received in time']
        : err.code === 'HPE_HEADER_OVERFLOW'
          ? ['400 Bad Request', 'malformed request: the request headers are too large']
          : ['400 Bad Request', `malformed request: ${err.code ?? 'not valid HTTP/1.1'}`];
    const text = `${JSON.stringify(reply.body(message))}\n`;
    socket.end(`HTTP/1.1 ${status}\r\nContent-Type: ${reply.contentType}\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`);
  });
}
