/**
 * The bench's own throwaway world: SoftHSM2 tokens, data dirs and config files come from the
 * test suite's TestStack (reused, not copied); what the tests do not need lives here — daemons
 * in cluster mode (readiness by polling /readyz, no IPC), optional --cpu-prof, the RSS of a
 * daemon and all its workers from /proc, and a small HTTP client for setting up keys.
 */
import { fork, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ORG, PIN, TestStack, type StackOptions } from '../test/helpers/stack.js';
import { MongoServer, freePort } from '../test/helpers/mongo.js';
import { KMSD_BIN, ROOT, SOFTHSM_LIB } from '../test/helpers/paths.js';

export { ORG, PIN, ROOT, SOFTHSM_LIB, MongoServer, TestStack, freePort };

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url)); // dist/bench
export const RESULTS_DIR = path.join(ROOT, 'bench', 'results');
export const BENCH_TMP = path.join(ROOT, 'tmp', 'bench');

/** Every child process the bench starts, so that an abort can still end them (by pid). */
const children = new Set<ChildProcess>();
export function track(p: ChildProcess): ChildProcess {
  children.add(p);
  p.once('exit', () => children.delete(p));
  return p;
}
export function killAllChildren(): void {
  for (const p of children) {
    try {
      if (p.pid) process.kill(p.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function createStack(name: string, mongodbUri: string, config: Record<string, unknown> = {}, organisations: string[] = [ORG]): Promise<TestStack> {
  const opts: StackOptions = {
    name: `bench-${name}`,
    mongodbUri,
    organisations: organisations.map((identity) => ({ identity, kmsEnabled: true })),
    principals: [{ name: 'admin', roles: ['admin'], organisations }],
    config: { logLevel: 'warn', ...config },
  };
  return TestStack.create(opts);
}

export interface DaemonStartOptions {
  /** config overrides for this daemon (workers, listen, xks, rotation, …) */
  config?: Record<string, unknown>;
  env?: NodeJS.ProcessEnv;
  /** extra node flags, e.g. ['--cpu-prof', '--cpu-prof-dir', dir] */
  execArgv?: string[];
  readyTimeoutMs?: number;
  label?: string;
}

/** A kmsd (one process, or a cluster primary with its workers) on a fixed port. */
export class BenchDaemon {
  logs = '';
  /** ms from fork() to the first GET /readyz 200 */
  readyMs = 0;
  /** performance.now() at fork() */
  forkedAt = 0;

  private constructor(
    readonly stack: TestStack,
    readonly proc: ChildProcess,
    readonly port: number,
    readonly label: string,
  ) {
    proc.stdout?.on('data', (d) => this.appendLog(d));
    proc.stderr?.on('data', (d) => this.appendLog(d));
  }

  private appendLog(d: Buffer | string): void {
    this.logs += d;
    if (this.logs.length > 200_000) this.logs = this.logs.slice(-100_000);
  }

  static async start(stack: TestStack, o: DaemonStartOptions = {}): Promise<BenchDaemon> {
    const port = await freePort();
    const config = { ...o.config, listen: { host: '127.0.0.1', port } };
    const label = o.label ?? 'kmsd';
    const file = stack.writeConfig(config, `${label}-${port}.yaml`);
    const t0 = performance.now();
    const proc = track(
      // KMSD_BENCH_BIN: another build of the daemon (a copy of dist/ of an earlier commit), for interleaved A/B runs.
      fork(process.env.KMSD_BENCH_BIN ?? KMSD_BIN, ['--config', file], {
        env: { ...stack.env, ...o.env },
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
        cwd: ROOT,
        execArgv: o.execArgv ?? [],
      }),
    );
    const d = new BenchDaemon(stack, proc, port, label);
    d.forkedAt = t0;
    const until = Date.now() + (o.readyTimeoutMs ?? 120_000);
    for (;;) {
      if (!d.alive) throw new Error(`${label} exited with ${proc.exitCode ?? proc.signalCode} before ready:\n${d.logs.slice(-4000)}`);
      try {
        const r = await fetch(`${d.url}/readyz`, { signal: AbortSignal.timeout(2000) });
        await r.arrayBuffer();
        if (r.status === 200) break;
      } catch {
        /* not listening yet */
      }
      if (Date.now() > until) {
        await d.stop();
        throw new Error(`${label} not ready in time:\n${d.logs.slice(-4000)}`);
      }
      await sleep(10);
    }
    d.readyMs = performance.now() - t0;
    return d;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /**
   * Cluster mode: /readyz 200 comes from whichever worker took the connection. A worker listens
   * only once fully started, so seeing `workers` distinct pids answer GET /healthz (a new
   * connection each time) means all of them serve. Resolves to ms since fork().
   */
  async waitAllWorkers(workers: number, timeoutMs = 60_000): Promise<number> {
    const seen = new Set<number>();
    const until = Date.now() + timeoutMs;
    while (seen.size < workers) {
      const pid = await new Promise<number | undefined>((resolve) => {
        const req = http.get(`${this.url}/healthz`, { agent: false }, (res) => {
          let text = '';
          res.on('data', (c) => (text += c));
          res.on('end', () => {
            try {
              resolve((JSON.parse(text) as { pid?: number }).pid);
            } catch {
              resolve(undefined);
            }
          });
        });
        req.on('error', () => resolve(undefined));
      });
      if (pid) seen.add(pid);
      if (seen.size >= workers) break;
      if (Date.now() > until) throw new Error(`only ${seen.size}/${workers} workers answered in time`);
      await sleep(5);
    }
    return performance.now() - this.forkedAt;
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** The daemon's pid and, in cluster mode, its workers' (from /proc). */
  pids(): number[] {
    const root = this.proc.pid;
    if (!root) return [];
    const out = [root];
    for (let i = 0; i < out.length; i++) out.push(...childPids(out[i]!));
    return out;
  }

  /** Sum of VmRSS over the daemon's processes, in bytes. */
  rssBytes(): number {
    return this.pids().reduce((sum, pid) => sum + rssOf(pid), 0);
  }

  async call<T = any>(method: string, p: string, body?: unknown, org: string | null = ORG): Promise<{ status: number; body: T }> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.stack.token('admin')}` };
    if (org) headers['x-organisation-identity'] = org;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(this.url + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
  }

  async ok<T = any>(method: string, p: string, body?: unknown, org: string | null = ORG): Promise<T> {
    const r = await this.call<T>(method, p, body, org);
    if (r.status >= 300) throw new Error(`${method} ${p} → ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }

  /** Ends the daemon gracefully (SIGTERM; SIGKILL after 20 s); resolves when it has exited. */
  async stop(): Promise<void> {
    if (!this.alive) return;
    await new Promise<void>((resolve) => {
      this.proc.once('exit', () => resolve());
      this.proc.kill('SIGTERM');
      setTimeout(() => {
        for (const pid of this.pids().reverse()) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
      }, 20_000).unref();
    });
  }
}

/** CPU seconds (user + system) used so far by a process and its descendants, from /proc. */
export function treeCpuSeconds(rootPid: number | undefined): number {
  if (!rootPid) return 0;
  const pids = [rootPid];
  for (let i = 0; i < pids.length; i++) pids.push(...childPids(pids[i]!));
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from 3 on
      ticks += Number(f[11]) + Number(f[12]); // utime, stime (fields 14, 15)
    } catch {
      /* exited */
    }
  }
  return ticks / 100; // USER_HZ
}

/** Busy CPU seconds of the whole machine so far (all cores; steal included), from /proc/stat. */
export function machineBusySeconds(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal
  return (f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!) / 100;
}

function childPids(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const txt = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
      if (txt) out.push(...txt.split(/\s+/).map(Number));
    }
  } catch {
    /* exited */
  }
  return out;
}

function rssOf(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** A self-signed certificate for 127.0.0.1 (openssl CLI), for the XKS listener and the HTTPS echo. */
export function selfSignedCert(dir: string): { certFile: string; keyFile: string } {
  const certFile = path.join(dir, 'bench-cert.pem');
  const keyFile = path.join(dir, 'bench-key.pem');
  const r = spawnSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', keyFile, '-out', certFile],
    { encoding: 'utf8' },
  );
  if (r.status !== 0) throw new Error(`openssl failed: ${r.stderr}`);
  return { certFile, keyFile };
}

/** Runs `fn` over `items` with at most `concurrency` in flight. */
export async function pool<T>(items: T[], concurrency: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= items.length) return;
      await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
}
