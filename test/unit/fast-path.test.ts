import { expect } from 'chai';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { withFastPath } from '../../src/api/fast-path.js';
import type { ApiRequest } from '../../src/api/handler.js';
import type { CryptoOperation } from '../../src/api/routes/crypto.js';
import type { Services } from '../../src/api/services.js';

/**
 * Which requests the fast path serves and how it parses them. The operations are stubs that
 * echo what they were given; the fallback stands in for Express and says so.
 */
describe('fast path: routing decisions and body parsing (stub operations)', () => {
  let server: http.Server;
  let base: string;
  const observed: string[] = [];
  const seen: ApiRequest[] = [];

  before(async () => {
    const s = {
      config: { limits: { maxBodyBytes: 1024 } },
      metrics: { observeRequest: (route: string, method: string, status: number) => observed.push(`${method} ${route} ${status}`) },
      log: { error: () => {} },
    } as unknown as Services;
    const ops: CryptoOperation[] = [
      {
        method: 'post',
        path: 'encrypt',
        run: async (req, requestId) => {
          seen.push(req);
          return { status: 200, body: { served: 'fast', params: req.params, body: req.body, requestId } };
        },
      },
      { method: 'post', path: 'fails', run: () => Promise.reject(new Error('bug')) },
      { method: 'get', path: 'public-key', run: async () => ({ status: 200, body: { served: 'fast' } }) },
    ];
    const fallback: http.RequestListener = (req, res) => {
      req.resume();
      req.on('end', () => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ served: 'express' }));
      });
    };
    server = http.createServer(withFastPath(s, ops, fallback));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  const post = async (path: string, body: string | Blob | ReadableStream | undefined, headers: Record<string, string> = { 'content-type': 'application/json' }) => {
    const init: RequestInit & { duplex?: string } = { method: 'POST', headers, body };
    if (body instanceof ReadableStream) init.duplex = 'half';
    const res = await fetch(base + path, init);
    return { status: res.status, headers: res.headers, body: (await res.json()) as Record<string, any> };
  };

  it('serves a plain JSON POST to a known operation, with its path parameters, request id and metrics label', async () => {
    const r = await post('/v1/kms/nl-01/keys/kms-abc_1.2~x/encrypt', '{"plaintext":"aGk="}', { 'content-type': 'application/json', 'x-request-id': 'rid-1' });
    expect(r.status).to.equal(200);
    expect(r.body).to.deep.equal({ served: 'fast', params: { region: 'nl-01', id: 'kms-abc_1.2~x' }, body: { plaintext: 'aGk=' }, requestId: 'rid-1' });
    expect(r.headers.get('x-request-id')).to.equal('rid-1');
    expect(r.headers.get('content-type')).to.equal('application/json; charset=utf-8');
    expect(observed).to.include('POST /v1/kms/:region/keys/:id/encrypt 200');
    expect(seen.at(-1)!.headers['content-type']).to.equal('application/json');
  });

  it('accepts charset=utf-8 in any case, drops a UTF-8 byte-order mark, and reads an empty body as {} (like body-parser)', async () => {
    expect((await post('/v1/kms/r/keys/k/encrypt', '{"a":1}', { 'content-type': 'Application/JSON; Charset=UTF-8' })).body.body).to.deep.equal({ a: 1 });
    const bom = new Blob([Buffer.from([0xef, 0xbb, 0xbf]), '{"b":2}']);
    expect((await post('/v1/kms/r/keys/k/encrypt', bom)).body.body).to.deep.equal({ b: 2 });
    expect((await post('/v1/kms/r/keys/k/encrypt', '')).body.body).to.deep.equal({});
    expect((await post('/v1/kms/r/keys/k/encrypt', '[1,2]')).body.body).to.deep.equal([1, 2]); // the operation's schema rejects it
  });

  it('answers malformed JSON with 400 ValidationError before the operation runs', async () => {
    const before = seen.length;
    const r = await post('/v1/kms/r/keys/k/encrypt', '{"plaintext":', { 'content-type': 'application/json', 'x-request-id': 'rid-2' });
    expect(r.status).to.equal(400);
    expect(r.body.code).to.equal('ValidationError');
    expect(r.body.message).to.match(/^malformed request body: /);
    expect(r.body.requestId).to.equal('rid-2');
    expect(seen.length).to.equal(before);
  });

  it('an operation that throws (a bug) is a 500 InternalError, and the server goes on', async () => {
    const r = await post('/v1/kms/r/keys/k/fails', '{}');
    expect(r.status).to.equal(500);
    expect(r.body.code).to.equal('InternalError');
    expect((await post('/v1/kms/r/keys/k/encrypt', '{}')).status).to.equal(200);
  });

  it('a client that hangs up mid-body runs nothing, and the server goes on', async () => {
    const before = seen.length;
    const port = (server.address() as AddressInfo).port;
    for (const hardReset of [false, true])
      await new Promise<void>((resolve) => {
        const sock = net.connect(port, '127.0.0.1', () => {
          sock.write('POST /v1/kms/r/keys/k/encrypt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"plaintext":');
          setTimeout(() => {
            if (hardReset) sock.resetAndDestroy();
            else sock.destroy();
            resolve();
          }, 30);
        });
      });
    await new Promise((r) => setTimeout(r, 50));
    expect(seen.length).to.equal(before);
    expect((await post('/v1/kms/r/keys/k/encrypt', '{}')).status).to.equal(200);
  });

  it('leaves everything unusual to Express', async () => {
    const cases: [string, string | ReadableStream, Record<string, string>][] = [
      ['/v1/kms/r/keys/k/encrypt?x=1', '{}', { 'content-type': 'application/json' }], // query
      ['/v1/kms/r/keys/k/encrypt/', '{}', { 'content-type': 'application/json' }], // trailing slash
      ['/v1/kms/r/keys/k%2Fx/encrypt', '{}', { 'content-type': 'application/json' }], // percent-encoding
      ['/V1/kms/r/keys/k/encrypt', '{}', { 'content-type': 'application/json' }], // Express matches case-insensitively
      ['/v1/kms/r/keys/k/nonsense', '{}', { 'content-type': 'application/json' }], // no such operation (Express: 404)
      ['/v1/kms/r/keys/k/public-key', '{}', { 'content-type': 'application/json' }], // a GET operation
      ['/v1/kms/r/keys/k/encrypt', '{}', { 'content-type': 'text/plain' }], // not JSON (Express decides)
      ['/v1/kms/r/keys/k/encrypt', '{}', { 'content-type': 'application/json; charset=latin1' }], // other charset (415 there)
      ['/v1/kms/r/keys/k/encrypt', '{}', { 'content-type': 'application/merge-patch+json' }],
      ['/v1/kms/r/keys/k/encrypt', 'x'.repeat(2000), { 'content-type': 'application/json' }], // over the limit (413 there)
      ['/v1/kms/r/keys/k/encrypt', '{}', { 'content-type': 'application/json', 'content-encoding': 'gzip' }],
      ['/v1/kms/r/keys/k/encrypt', new Blob(['{}']).stream(), { 'content-type': 'application/json' }], // chunked
    ];
    for (const [path, body, headers] of cases) expect((await post(path, body, headers)).body.served, `${path} ${JSON.stringify(headers)}`).to.equal('express');
    const get = await fetch(`${base}/v1/kms/r/keys/k/encrypt`);
    expect(((await get.json()) as { served: string }).served).to.equal('express');
  });
});
