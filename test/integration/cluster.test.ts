import { expect } from 'chai';
import http from 'node:http';
import { TestStack, waitFor, type Daemon } from '../helpers/stack.js';

/** Distinct worker pids seen through /healthz over fresh connections. */
async function workerPids(d: Daemon, tries = 40): Promise<Set<number>> {
  const pids = new Set<number>();
  for (let i = 0; i < tries; i++) {
    // a new TCP connection each time (agent: false), so the primary hands it to either worker
    const pid = await new Promise<number | undefined>((resolve) => {
      const req = http.get(`${d.url}/healthz`, { agent: false, timeout: 3000 }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve(JSON.parse(body).pid));
      });
      req.on('timeout', () => req.destroy());
      req.on('error', () => resolve(undefined));
    });
    if (pid) pids.add(pid);
  }
  return pids;
}

describe('cluster: several worker processes share port, token, data dir and MongoDB', function () {
  this.timeout(120_000);
  let stack: TestStack;
  let d: Daemon;
  before(async () => {
    stack = await TestStack.create({ name: 'cluster' });
    d = await stack.start({ workers: 2 });
  });
  after(() => stack.cleanup());

  it('serves from two workers, and a key made through one is usable and disable-able through the other', async () => {
    const pids = await workerPids(d);
    expect(pids.size).to.equal(2);
    await d.createKey('shared', 'aes256-gcm96');
    for (let i = 0; i < 10; i++) {
      const e = await d.post('/keys/shared/encrypt', { plaintext: 'aGk=' }, { headers: { connection: 'close' } });
      expect(e.status).to.equal(200);
    }
    await d.post('/keys/shared/disable');
    for (let i = 0; i < 10; i++) {
      const e = await d.post('/keys/shared/encrypt', { plaintext: 'aGk=' }, { headers: { connection: 'close' } });
      expect(e.status).to.equal(409);
    }
  });

  it('the primary commits every worker\u2019s audit rows into the one chain, each before its response', async () => {
    const k = await d.createKey('audited across workers', 'aes256-gcm96');
    // concurrent requests over fresh connections land on both workers
    const ids = Array.from({ length: 40 }, (_, i) => `cluster-audit-${i}`);
    const replies = await Promise.all(
      ids.map((id) => d.post(`/keys/${k.identity}/encrypt`, { plaintext: 'aGk=' }, { headers: { connection: 'close', 'x-request-id': id } })),
    );
    expect(replies.map((r) => r.status)).to.deep.equal(ids.map(() => 200));
    // each response was sent after its record committed: all are there at once, no waiting
    const a = await d.get(`/audit?keyIdentity=${k.identity}&action=kms.encrypt&limit=100`);
    expect(a.body.events.map((e: any) => e.requestId).sort()).to.deep.equal([...ids].sort());
    const v = await d.call('GET', '/v1/kms/audit/verify');
    expect(v.body.valid).to.equal(true);
    const seqs = a.body.events.map((e: any) => e.seq);
    expect(new Set(seqs).size).to.equal(seqs.length);
  });

  it('restarts a worker that crashed', async () => {
    const before = await workerPids(d);
    const victim = [...before][0]!;
    process.kill(victim, 'SIGKILL');
    const after = await waitFor(
      'replacement worker',
      async () => {
        const p = await workerPids(d, 20).catch(() => new Set<number>());
        return p.size === 2 && !p.has(victim) ? p : undefined;
      },
      60_000,
      500,
    );
    expect(after.size).to.equal(2);
    expect((await d.get('/keys/shared')).status).to.equal(200);
  });

  it('shuts all workers down gracefully on SIGTERM', async () => {
    const pids = await workerPids(d);
    const code = await new Promise<number | null>((resolve) => {
      d.proc.once('exit', (c) => resolve(c));
      d.proc.kill('SIGTERM');
    });
    expect(code).to.equal(0);
    for (const pid of pids) expect(() => process.kill(pid, 0)).to.throw();
  });
});
