/**
 * The `express-echo` baseline: a minimal Express 5 app (same Node, JSON body parsing like
 * kmsd's) that answers every request with one fixed JSON body; with `"server":"node-http"`
 * the `node-http-echo` baseline instead: a bare node:http handler that reads the request body
 * and answers the same fixed JSON body (no parsing, no framework — the per-process HTTP ceiling).
 * Run as its own process:
 *   node dist/bench/echo.js '{"port":N,"response":{…},"tls":{"certFile","keyFile"},"workers":1,"server":"express"}'
 * Over TLS it serves the same certificate as kmsd's XKS listener (the HTTPS echo baseline).
 * With workers > 1 it is a node:cluster of that many identical processes on one port.
 */
import cluster from 'node:cluster';
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import express from 'express';

export interface EchoOptions {
  port: number;
  response: unknown;
  tls?: { certFile: string; keyFile: string };
  workers?: number;
  /** express (default): the express-echo baseline; node-http: the bare node-http-echo baseline. */
  server?: 'express' | 'node-http';
}

/** The bare node:http echo: reads the body to its end, answers the fixed JSON (same headers as kmsd's fast path). */
function nodeHttpEcho(fixed: string): http.RequestListener {
  const length = Buffer.byteLength(fixed);
  return (req, res) => {
    req.on('data', () => {});
    req.on('end', () => {
      res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': length });
      res.end(fixed);
    });
  };
}

function serve(o: EchoOptions): Promise<void> {
  const app = o.server === 'node-http' ? nodeHttpEcho(JSON.stringify(o.response)) : expressEcho(o);
  const server = o.tls ? https.createServer({ cert: readFileSync(o.tls.certFile), key: readFileSync(o.tls.keyFile), minVersion: 'TLSv1.2' }, app) : http.createServer(app);
  server.keepAliveTimeout = 65_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, '127.0.0.1', () => resolve());
  });
}

function expressEcho(o: EchoOptions): http.RequestListener {
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  app.use(express.json({ limit: 65536 }));
  const fixed = JSON.stringify(o.response);
  app.use((_req, res) => {
    res.type('application/json').send(fixed);
  });
  return app;
}

const isMain = process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  const o = JSON.parse(process.argv[2] ?? process.env.KMSD_BENCH_ECHO ?? '{}') as EchoOptions;
  const workers = o.workers ?? 1;
  if (workers > 1 && cluster.isPrimary) {
    let listening = 0;
    cluster.on('listening', () => {
      if (++listening === workers) process.send?.({ echo: 'ready', port: o.port });
    });
    for (let i = 0; i < workers; i++) cluster.fork({ KMSD_BENCH_ECHO: JSON.stringify(o) });
    process.on('SIGTERM', () => {
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGKILL');
      process.exit(0);
    });
  } else {
    await serve(o);
    if (cluster.isPrimary) process.send?.({ echo: 'ready', port: o.port });
  }
}

/** Forks an echo server and resolves once it listens. */
export async function startEcho(o: EchoOptions, track: (p: ChildProcess) => ChildProcess = (p) => p): Promise<ChildProcess> {
  const file = fileURLToPath(import.meta.url);
  const proc = track(fork(file, [JSON.stringify(o)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('echo did not start')), 30_000);
    proc.on('message', (m: { echo?: string }) => {
      if (m?.echo === 'ready') {
        clearTimeout(t);
        resolve();
      }
    });
    proc.once('exit', (c) => {
      clearTimeout(t);
      reject(new Error(`echo exited with ${c}`));
    });
  });
  return proc;
}

export async function stopProc(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  await new Promise<void>((resolve) => {
    p.once('exit', () => resolve());
    p.kill('SIGTERM');
  });
}
