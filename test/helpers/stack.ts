import { fork, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { KMSD_BIN, ROOT, SOFTHSM_LIB, TMP_ROOT } from './paths.js';
import { sharedMongoUri } from './hooks.js';

export const ORG = 'org-test';
export const PIN = '1234';

export interface PrincipalSpec {
  name: string;
  roles: string[];
  organisations?: string[];
}

export interface StackOptions {
  name: string;
  regions?: string[];
  /** region → token label; a label not created with `tokens` stays missing (region unavailable). */
  tokenLabels?: Record<string, string>;
  principals?: PrincipalSpec[];
  organisations?: { identity: string; kmsEnabled: boolean }[];
  mongodbUri?: string;
  config?: Record<string, unknown>;
  /** create these token labels (default: one per region) */
  tokens?: string[];
  /** extra environment for the daemons (e.g. P11_KIT_SERVER_ADDRESS) */
  env?: Record<string, string>;
}

/** A throwaway token dir (SoftHSM2), data dir and config; daemons started on it share them. */
export class TestStack {
  readonly dir: string;
  readonly tokenDir: string;
  readonly softhsmConf: string;
  readonly dataDir: string;
  readonly tokens = new Map<string, string>(); // principal name → bearer token
  readonly daemons: Daemon[] = [];
  config: Record<string, unknown> = {};

  constructor(readonly opts: StackOptions) {
    this.dir = path.join(TMP_ROOT, `${opts.name}-${process.pid}-${randomBytes(3).toString('hex')}`);
    this.tokenDir = path.join(this.dir, 'tokens');
    this.softhsmConf = path.join(this.dir, 'softhsm2.conf');
    this.dataDir = path.join(this.dir, 'data');
  }

  static async create(opts: StackOptions): Promise<TestStack> {
    const s = new TestStack(opts);
    rmSync(s.dir, { recursive: true, force: true });
    mkdirSync(s.tokenDir, { recursive: true });
    writeFileSync(s.softhsmConf, `directories.tokendir = ${s.tokenDir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
    const regions = opts.regions ?? ['nl-01'];
    const labels = opts.tokenLabels ?? Object.fromEntries(regions.map((r) => [r, `kmsd-${r}`]));
    for (const label of opts.tokens ?? Object.values(labels)) s.initToken(label);
    const principals = opts.principals ?? [{ name: 'admin', roles: ['admin'] }];
    s.config = {
      listen: { host: '127.0.0.1', port: 0 },
      dataDir: s.dataDir,
      mongodbUri: opts.mongodbUri ?? sharedMongoUri(),
      regions: regions.map((r) => ({ name: r, pkcs11Module: SOFTHSM_LIB, tokenLabel: labels[r], pinEnv: 'KMSD_TEST_PIN' })),
      organisations: opts.organisations ?? [
        { identity: ORG, kmsEnabled: true },
        { identity: 'org-other', kmsEnabled: true },
        { identity: 'org-off', kmsEnabled: false },
      ],
      principals: principals.map((p) => {
        const token = `test-${p.name}-${randomBytes(12).toString('hex')}`;
        s.tokens.set(p.name, token);
        return {
          name: p.name,
          tokenSha256: createHash('sha256').update(token).digest('hex'),
          organisations: p.organisations ?? [ORG, 'org-other', 'org-off'],
          roles: p.roles,
        };
      }),
      rotation: { evaluationIntervalSeconds: 3600, maxManualRotations: 10 },
      testing: { clockControl: true },
      logLevel: 'warn',
      ...opts.config,
    };
    return s;
  }

  initToken(label: string): void {
    const r = spawnSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', `so-${PIN}`, '--pin', PIN], {
      env: { ...process.env, SOFTHSM2_CONF: this.softhsmConf },
      encoding: 'utf8',
    });
    if (r.status !== 0) throw new Error(`softhsm2-util failed: ${r.stderr}`);
  }

  writeConfig(overrides: Record<string, unknown> = {}, name = 'kmsd.yaml'): string {
    const file = path.join(this.dir, name);
    writeFileSync(file, stringify({ ...this.config, ...overrides }));
    return file;
  }

  get env(): NodeJS.ProcessEnv {
    return { ...process.env, SOFTHSM2_CONF: this.softhsmConf, KMSD_TEST_PIN: PIN, ...this.opts.env };
  }

  token(name = 'admin'): string {
    const t = this.tokens.get(name);
    if (!t) throw new Error(`no principal ${name}`);
    return t;
  }

  async start(overrides: Record<string, unknown> = {}): Promise<Daemon> {
    const d = await Daemon.start(this, this.writeConfig(overrides, `kmsd-${this.daemons.length}.yaml`));
    this.daemons.push(d);
    return d;
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.daemons.map((d) => d.stop()));
  }

  async cleanup(): Promise<void> {
    await this.stopAll();
    if (!process.env.KMSD_KEEP_TEST_DIRS) rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface Reply<T = any> {
  status: number;
  body: T;
  headers: Headers;
}

export interface CallOptions {
  token?: string | null;
  org?: string | null;
  project?: string;
  headers?: Record<string, string>;
  raw?: string;
}

/** One kmsd process started for real (`node dist/src/bin/kmsd.js --config …`). */
export class Daemon {
  logs = '';
  constructor(
    readonly stack: TestStack,
    readonly proc: ChildProcess,
    readonly port: number,
    /** The XKS proxy listener's port when the config has an `xks` block. */
    readonly xksPort?: number,
    /** The AWS KMS API listener's port when the config has an `aws` block. */
    readonly awsPort?: number,
  ) {}

  static async start(stack: TestStack, configFile: string): Promise<Daemon> {
    const proc = fork(KMSD_BIN, ['--config', configFile], { env: stack.env, stdio: ['ignore', 'pipe', 'pipe', 'ipc'], cwd: ROOT });
    let logs = '';
    proc.stdout!.on('data', (d) => (logs += d));
    proc.stderr!.on('data', (d) => (logs += d));
    const { port, xksPort, awsPort } = await new Promise<{ port: number; xksPort?: number; awsPort?: number }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`kmsd did not start in 60 s:\n${logs}`)), 60_000);
      proc.on('message', (m: { kmsd?: string; port?: number; xksPort?: number; awsPort?: number }) => {
        if (m?.kmsd === 'ready') {
          clearTimeout(timer);
          resolve({ port: m.port!, xksPort: m.xksPort, awsPort: m.awsPort });
        }
      });
      proc.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`kmsd exited with ${code}:\n${logs}`));
      });
    });
    const d = new Daemon(stack, proc, port, xksPort, awsPort);
    proc.stdout!.on('data', (x) => (d.logs += x));
    proc.stderr!.on('data', (x) => (d.logs += x));
    d.logs = logs;
    return d;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async call<T = any>(method: string, p: string, body?: unknown, o: CallOptions = {}): Promise<Reply<T>> {
    const headers: Record<string, string> = { ...o.headers };
    const token = o.token === undefined ? this.stack.token('admin') : o.token;
    if (token !== null) headers.authorization = `Bearer ${token}`;
    const org = o.org === undefined ? ORG : o.org;
    if (org !== null) headers['x-organisation-identity'] = org;
    if (o.project) headers['x-project-identity'] = o.project;
    let payload: string | undefined = o.raw;
    if (body !== undefined) payload = JSON.stringify(body);
    if (payload !== undefined) headers['content-type'] ??= 'application/json';
    const res = await fetch(this.url + p, { method, headers, body: payload });
    const text = await res.text();
    if (res.status === 500) {
      // a 500 is always a bug: show what the daemon logged about it
      const lines = this.logs.split('\n').filter((l) => l.includes('"error"'));
      process.stderr.write(`[kmsd 500 on ${method} ${p}] ${lines.slice(-3).join('\n')}\n`);
    }
    let parsed: unknown = text;
    if ((res.headers.get('content-type') ?? '').includes('json')) parsed = text ? JSON.parse(text) : undefined;
    return { status: res.status, body: parsed as T, headers: res.headers };
  }

  /** Regional path helper: `k('/keys/x/encrypt')` → /v1/kms/nl-01/keys/x/encrypt. */
  post<T = any>(p: string, body?: unknown, o?: CallOptions & { region?: string }) {
    return this.call<T>('POST', `/v1/kms/${o?.region ?? 'nl-01'}${p}`, body, o);
  }
  get<T = any>(p: string, o?: CallOptions & { region?: string }) {
    return this.call<T>('GET', `/v1/kms/${o?.region ?? 'nl-01'}${p}`, undefined, o);
  }
  patch<T = any>(p: string, body?: unknown, o?: CallOptions & { region?: string }) {
    return this.call<T>('PATCH', `/v1/kms/${o?.region ?? 'nl-01'}${p}`, body, o);
  }
  del<T = any>(p: string, o?: CallOptions & { region?: string }) {
    return this.call<T>('DELETE', `/v1/kms/${o?.region ?? 'nl-01'}${p}`, undefined, o);
  }

  async createKey(name: string, keyType: string, extra: Record<string, unknown> = {}, o?: CallOptions & { region?: string }) {
    const r = await this.post('/keys', { name, keyType, ...extra }, o);
    if (r.status !== 201) throw new Error(`create ${name} (${keyType}) failed: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }

  async advanceClock(seconds: number): Promise<void> {
    const r = await this.call('POST', '/v1/testing/clock', { advanceSeconds: seconds }, { org: null });
    if (r.status !== 200) throw new Error(`clock: ${r.status} ${JSON.stringify(r.body)}`);
  }

  async stop(): Promise<void> {
    if (!this.alive) return;
    await new Promise<void>((resolve) => {
      this.proc.once('exit', () => resolve());
      this.proc.kill('SIGTERM');
      setTimeout(() => this.proc.kill('SIGKILL'), 15_000).unref();
    });
  }

  async kill(): Promise<void> {
    if (!this.alive) return;
    await new Promise<void>((resolve) => {
      this.proc.once('exit', () => resolve());
      this.proc.kill('SIGKILL');
    });
  }
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000, everyMs = 200): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

