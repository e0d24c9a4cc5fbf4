import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ROOT, TMP_ROOT } from './paths.js';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export async function waitForPort(port: number, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1');
      c.once('connect', () => (c.destroy(), resolve(true)));
      c.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`port ${port} did not open`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * A real MongoDB-compatible server for tests: `mongod` if on PATH, else the FerretDB 1.24
 * binary scripts/lib.sh built into .cache/. Each instance has its own port and data dir.
 */
export class MongoServer {
  /** Every server this test process started and has not destroyed (the root hook destroys them at the end of the run). */
  private static readonly started = new Set<MongoServer>();
  private proc?: ChildProcess;
  readonly dir: string;

  constructor(
    readonly port: number,
    name: string,
  ) {
    this.dir = path.join(TMP_ROOT, `mongo-${name}-${port}`);
  }

  static async start(name = 'shared'): Promise<MongoServer> {
    const m = new MongoServer(await freePort(), name);
    rmSync(m.dir, { recursive: true, force: true });
    MongoServer.started.add(m);
    await m.resume();
    return m;
  }

  /** Stops every server still running and removes their folders under tmp/test (end of a run). */
  static async destroyAll(): Promise<void> {
    await Promise.all([...MongoServer.started].map((m) => m.destroy()));
  }

  get uri(): string {
    return `mongodb://127.0.0.1:${this.port}/kmsd`;
  }

  /** (Re)starts the server on the same port and data dir. */
  async resume(): Promise<void> {
    mkdirSync(this.dir, { recursive: true });
    const mongod = process.env.KMSD_TEST_MONGOD;
    this.proc = mongod
      ? spawn(mongod, ['--dbpath', this.dir, '--bind_ip', '127.0.0.1', '--port', String(this.port)], { stdio: 'ignore' })
      : spawn(path.join(ROOT, '.cache/ferretdb-kmsd'), ['-listen', `127.0.0.1:${this.port}`, '-dir', path.join(this.dir, 'ferretdb')], {
          stdio: 'ignore',
        });
    await waitForPort(this.port);
  }

  /** Stops the server for good and removes its data folder (stop() keeps it for resume()). */
  async destroy(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
    MongoServer.started.delete(this);
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      p.once('exit', () => resolve());
      p.kill('SIGKILL');
    });
    this.proc = undefined;
  }
}
