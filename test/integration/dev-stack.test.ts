import { expect } from 'chai';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { rawAwsCall } from '../helpers/aws.js';
import { freePort, MongoServer } from '../helpers/mongo.js';
import { KMSD_BIN, ROOT, TMP_ROOT } from '../helpers/paths.js';
import { TestStack, waitFor } from '../helpers/stack.js';

/** Is something listening on 127.0.0.1:port? */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1');
    c.once('connect', () => (c.destroy(), resolve(true)));
    c.once('error', () => resolve(false));
  });
}

/** Pids of live processes in a process group (from /proc). */
function groupMembers(pgid: number): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      // pid (comm) state ppid pgrp …; comm may contain spaces, so split after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (fields[0] !== 'Z' && Number(fields[2]) === pgid) out.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

describe('newcomer: npm run dev, the shipped config, test cleanup', function () {
  this.timeout(240_000);

  describe('scripts/dev.sh stops cleanly on SIGTERM (an IDE stop button, kill <pid>)', () => {
    let dev: ChildProcess | undefined;
    let dir = '';
    afterEach(() => {
      // Safety net only: the test itself asserts that nothing is left.
      if (dev?.pid) for (const p of groupMembers(dev.pid)) process.kill(p, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    });

    for (const how of ['bash scripts/dev.sh', 'npm run dev'] as const)
      it(`${how}: SIGTERM to its pid stops kmsd and the MongoDB-compatible server it started, leaving no process`, async () => {
        dir = path.join(TMP_ROOT, `dev-sh-${process.pid}-${how.split(' ')[0]}`);
        rmSync(dir, { recursive: true, force: true });
        mkdirSync(dir, { recursive: true });
        const port = await freePort();
        const mongoPort = await freePort();
        const awsPort = await freePort();
        const env: NodeJS.ProcessEnv = {
          ...process.env,
          KMSD_PORT: String(port),
          KMSD_MONGO_PORT: String(mongoPort),
          KMSD_AWS_PORT: String(awsPort),
          KMSD_DEV_DIR: dir,
          KMSD_WORKERS: '1',
        };
        delete env.MONGODB_URI;
        let output = '';
        const [cmd, ...args] = how.split(' ');
        // Own process group, as an IDE or a service manager would start it.
        dev = spawn(cmd!, args, { cwd: ROOT, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
        dev.stdout!.on('data', (d) => (output += d));
        dev.stderr!.on('data', (d) => (output += d));
        const exited = new Promise<number | null>((resolve) => dev!.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : null))));
        await waitFor(
          `kmsd of ${how} to be ready`,
          async () => {
            if (dev!.exitCode !== null) throw new Error(`${how} exited early:\n${output}`);
            const r = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
            return r?.status === 200;
          },
          180_000,
          250,
        );
        expect(await listening(mongoPort), 'mongo port open while running').to.equal(true);
        // It used our temp folder, not the developer's data/.
        expect(existsSync(path.join(dir, 'admin.token'))).to.equal(true);
        // KMSD_AWS_PORT adds the AWS KMS API with the README's access key and a secret in aws.secret
        // (its listener opens just after the main one, which may already answer /readyz).
        await waitFor('the AWS KMS API port to open', () => listening(awsPort), 20_000);
        const credential = { accessKeyId: 'AKIAKMSDEXAMPLE00001', secretAccessKey: readFileSync(path.join(dir, 'aws.secret'), 'utf8') };
        const keys = await rawAwsCall(awsPort, 'TrentService.ListKeys', {}, { credential });
        expect(keys.status, JSON.stringify(keys.body)).to.equal(200);
        expect(keys.body.Keys).to.be.an('array').with.length.greaterThan(0);

        process.kill(dev.pid!, 'SIGTERM');
        await exited;
        await waitFor('daemon, AWS and mongo ports to close', async () => !(await listening(port)) && !(await listening(awsPort)) && !(await listening(mongoPort)), 20_000);
        await waitFor('no process left in the group', async () => groupMembers(dev!.pid!).length === 0, 20_000);
        expect(output).not.to.match(/Terminated|Killed/);
        expect(output, 'says what it is doing and how long steps usually take').to.match(/usually/);
      });
  });

  it('the README walkthrough (Calling the dev daemon) runs as pasted: encrypt, then decrypt of the ciphertext it printed', async () => {
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Calling the dev daemon'));
    const script = /```bash\n([\s\S]*?)```/.exec(section)![1]!;
    const stack = await TestStack.create({ name: 'readme', organisations: [{ identity: 'org-demo', kmsEnabled: true }], principals: [{ name: 'admin', roles: ['admin'], organisations: ['org-demo'] }] });
    try {
      const d = await stack.start();
      // As on a dev machine: run from a folder with data/admin.token, the daemon on its own port.
      const cwd = path.join(stack.dir, 'checkout');
      mkdirSync(path.join(cwd, 'data'), { recursive: true });
      writeFileSync(path.join(cwd, 'data', 'admin.token'), stack.token('admin'));
      // The walkthrough takes the port from KMSD_PORT, as a dev stack started with it needs.
      const env: NodeJS.ProcessEnv = { ...process.env, KMSD_PORT: String(d.port) };
      delete env.KMSD_DEV_DIR;
      const r = spawnSync('bash', ['-e', '-c', script], { cwd, encoding: 'utf8', env });
      expect(r.status, r.stderr).to.equal(0);
      const lines = r.stdout.split('\n');
      expect(lines.some((l) => /^kms:v1:[A-Za-z0-9+/=]+$/.test(l)), r.stdout).to.equal(true);
      expect(lines, r.stdout).to.include('{"plaintext":"aGVsbG8=","keyVersion":"1"}');
      expect(r.stdout).to.match(/^\{"status":"ready"/m);
    } finally {
      await stack.cleanup();
    }
  });

  it('every config file shipped under config/ passes kmsd --check-config', () => {
    const files = spawnSync('git', ['ls-files', 'config'], { cwd: ROOT, encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
    expect(files.length, 'shipped config files').to.be.greaterThan(0);
    for (const f of files) {
      const r = spawnSync(process.execPath, [KMSD_BIN, '--check-config', '--config', path.join(ROOT, f)], { encoding: 'utf8', env: { ...process.env, KMSD_PIN_NL_01: '1234' } });
      expect(r.status, `${f}: ${r.stderr}`).to.equal(0);
    }
  });

  it('a test MongoDB server removes its folder under tmp/test when destroyed (the run ends with none left)', async () => {
    const m = await MongoServer.start('cleanup-probe');
    expect(existsSync(m.dir)).to.equal(true);
    await m.destroy();
    expect(existsSync(m.dir)).to.equal(false);
    expect(await listening(m.port)).to.equal(false);
  });
});
