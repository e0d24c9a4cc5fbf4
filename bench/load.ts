/**
 * Load-generator child process: runs autocannon (programmatic) or a /healthz prober on request
 * and reports JSON back over IPC, so the bench's own process never shares an event loop with
 * the load. Started by LoadProcess (below) with child_process.fork.
 */
import { fork, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';

export interface HttpLoadJob {
  type: 'http';
  url: string; // http(s)://127.0.0.1:port/path
  method: 'GET' | 'POST';
  headers: Record<string, string>;
  body?: string;
  connections: number;
  durationSec: number;
}

export interface ProbeJob {
  type: 'probe';
  url: string;
  intervalMs: number;
  durationMs: number;
}

export type LoadJob = HttpLoadJob | ProbeJob;

export interface HttpLoadResult {
  type: 'http';
  seconds: number;
  ok: number; // 2xx responses
  non2xx: number;
  errors: number;
  timeouts: number;
  reqPerSec: number; // 2xx per second
  p50: number; // ms
  p99: number;
  max: number;
  statusCodes: Record<string, number>;
  /** CPU the load generator itself used, in % of one core */
  loadgenCpu: number;
}

export interface ProbeResult {
  type: 'probe';
  probes: number;
  failures: number;
  p50: number; // ms
  p99: number;
  max: number;
}

function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function runHttp(job: HttpLoadJob): Promise<HttpLoadResult> {
  const cpu0 = process.cpuUsage();
  const r = await autocannon({
    url: job.url,
    method: job.method,
    headers: job.headers,
    body: job.body,
    connections: job.connections,
    pipelining: 1,
    duration: job.durationSec,
    timeout: 10,
  });
  const cpu = process.cpuUsage(cpu0);
  const ok = r['2xx'];
  const codes: Record<string, number> = {};
  for (const [code, v] of Object.entries(r.statusCodeStats ?? {})) codes[code] = (v as { count: number }).count;
  return {
    type: 'http',
    seconds: r.duration,
    ok,
    non2xx: r.non2xx,
    errors: r.errors,
    timeouts: r.timeouts,
    reqPerSec: ok / r.duration,
    p50: r.latency.p50,
    p99: r.latency.p99,
    max: r.latency.max,
    statusCodes: codes,
    loadgenCpu: (100 * (cpu.user + cpu.system)) / 1e6 / r.duration,
  };
}

/** GET `url` every intervalMs on one keep-alive connection; latency of each probe. */
async function runProbe(job: ProbeJob): Promise<ProbeResult> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  const lat: number[] = [];
  let failures = 0;
  const end = performance.now() + job.durationMs;
  const one = () =>
    new Promise<void>((resolve) => {
      const t0 = performance.now();
      const req = http.get(job.url, { agent }, (res) => {
        res.resume();
        res.on('end', () => {
          if (res.statusCode === 200) lat.push(performance.now() - t0);
          else failures++;
          resolve();
        });
      });
      req.setTimeout(10_000, () => req.destroy(new Error('timeout')));
      req.on('error', () => {
        failures++;
        resolve();
      });
    });
  while (performance.now() < end) {
    const t0 = performance.now();
    await one();
    const wait = job.intervalMs - (performance.now() - t0);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  agent.destroy();
  lat.sort((a, b) => a - b);
  return { type: 'probe', probes: lat.length, failures, p50: percentile(lat, 50), p99: percentile(lat, 99), max: lat[lat.length - 1] ?? NaN };
}

if (process.send && process.argv.includes('--load-worker')) {
  process.on('message', async (m: { id: number; job: LoadJob }) => {
    try {
      const result = m.job.type === 'http' ? await runHttp(m.job) : await runProbe(m.job);
      process.send!({ id: m.id, ok: true, result });
    } catch (e) {
      process.send!({ id: m.id, ok: false, error: (e as Error).stack ?? String(e) });
    }
  });
}

/** Parent side: one forked load-generator process, jobs sent one at a time. */
export class LoadProcess {
  private next = 0;
  private readonly pending = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void }>();

  private constructor(readonly proc: ChildProcess) {
    proc.on('message', (m: { id: number; ok: boolean; result?: unknown; error?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.result);
      else p.reject(new Error(m.error));
    });
    proc.once('exit', (code) => {
      for (const p of this.pending.values()) p.reject(new Error(`load process exited with ${code}`));
      this.pending.clear();
    });
  }

  static start(track: (p: ChildProcess) => ChildProcess = (p) => p): LoadProcess {
    const file = path.join(path.dirname(fileURLToPath(import.meta.url)), 'load.js');
    return new LoadProcess(track(fork(file, ['--load-worker'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })));
  }

  http(job: Omit<HttpLoadJob, 'type'>): Promise<HttpLoadResult> {
    return this.send({ type: 'http', ...job });
  }

  probe(job: Omit<ProbeJob, 'type'>): Promise<ProbeResult> {
    return this.send({ type: 'probe', ...job });
  }

  private send<T>(job: LoadJob): Promise<T> {
    const id = this.next++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.proc.send({ id, job });
    });
  }

  stop(): void {
    if (this.proc.exitCode === null) this.proc.kill('SIGTERM');
  }
}
