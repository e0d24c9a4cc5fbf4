import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import path from 'node:path';
import { SOFTHSM_LIB } from './paths.js';
import type { TestStack } from './stack.js';

/** p11-kit-client.so from Debian's p11-kit-modules (scripts/lib.sh ensure_p11kit installs it). */
export function p11kitClientModule(): string {
  const r = spawnSync('dpkg', ['-L', 'p11-kit-modules'], { encoding: 'utf8' });
  const found = r.stdout?.split('\n').find((l) => l.endsWith('/p11-kit-client.so'));
  if (!found) throw new Error('p11-kit-client.so not found: install p11-kit-modules (scripts/lib.sh ensure_p11kit)');
  return found;
}

/**
 * A real `p11-kit server` process exporting one SoftHSM2 token of a test stack over a Unix
 * socket: what a network HSM looks like to kmsd (every call crosses a process boundary).
 */
export class P11KitServer {
  private proc?: ChildProcess;
  readonly socket: string;

  constructor(
    private readonly stack: TestStack,
    private readonly tokenLabel: string,
  ) {
    this.socket = path.join(stack.dir, 'p11kit.sock');
  }

  /** For the daemons' environment: where p11-kit-client.so connects. */
  get address(): string {
    return `unix:path=${this.socket}`;
  }

  async start(): Promise<void> {
    rmSync(this.socket, { force: true });
    this.proc = spawn('p11-kit', ['server', '--provider', SOFTHSM_LIB, '-f', '-n', this.socket, `pkcs11:token=${this.tokenLabel}`], {
      env: this.stack.env,
      stdio: 'ignore',
      // its own process group: p11-kit server forks one child per client connection, and a
      // dropped token means those go too
      detached: true,
    });
    for (let i = 0; i < 200 && !existsSync(this.socket); i++) await new Promise((r) => setTimeout(r, 25));
    if (!existsSync(this.socket)) throw new Error('p11-kit server did not create its socket');
  }

  /** SIGKILL to the server and its per-connection children: the token connection drops with no goodbye. */
  async kill(): Promise<void> {
    const p = this.proc;
    if (!p?.pid || p.exitCode !== null || p.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      p.once('exit', () => resolve());
      process.kill(-p.pid!, 'SIGKILL');
    });
    rmSync(this.socket, { force: true });
  }
}
