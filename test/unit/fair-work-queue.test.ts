import { expect } from 'chai';
import fc from 'fast-check';
import { KmsError } from '../../src/errors.js';
import { FairWorkQueue } from '../../src/token/fair-work-queue.js';

/** A job the test finishes by hand, recording when it started. */
function gate() {
  let open!: () => void;
  let fail!: (e: unknown) => void;
  const done = new Promise<void>((resolve, reject) => {
    open = resolve;
    fail = reject;
  });
  return { done, open, fail };
}
const tick = () => new Promise((r) => setImmediate(r));

describe('unit: fair work queue (expensive token work shared between organisations)', () => {
  it('serves organisations fairly: a late organisation runs as soon as a slot frees, then they alternate', async () => {
    const q = new FairWorkQueue({ name: 'nl-01', concurrency: 1, maxPendingPerOrganisation: 100 });
    const started: string[] = [];
    const gates = new Map<string, ReturnType<typeof gate>>();
    const job = (id: string) => () => {
      started.push(id);
      const g = gate();
      gates.set(id, g);
      return g.done;
    };
    const all = ['a1', 'a2', 'a3', 'a4'].map((id) => q.run('org-a', job(id)));
    await tick();
    const b = q.run('org-b', job('b1'));
    const c = q.run('org-c', job('c1'));
    for (const id of ['a1', 'b1', 'c1', 'a2', 'a3', 'a4']) {
      await tick();
      gates.get(id)!.open();
    }
    await Promise.all([...all, b, c]);
    expect(started).to.deep.equal(['a1', 'b1', 'c1', 'a2', 'a3', 'a4']);
  });

  it('two busy organisations alternate; a newcomer does not get a burst of turns', async () => {
    const q = new FairWorkQueue({ name: 'r', concurrency: 1, maxPendingPerOrganisation: 100 });
    const started: string[] = [];
    const g = gate();
    const first = q.run('org-a', () => {
      started.push('a0');
      return g.done;
    });
    const rest = [
      ...['a1', 'a2', 'a3', 'a4'].map((id) => q.run('org-a', async () => void started.push(id))),
      ...['b1', 'b2', 'b3'].map((id) => q.run('org-b', async () => void started.push(id))),
    ];
    g.open();
    await Promise.all([first, ...rest]);
    expect(started).to.deep.equal(['a0', 'b1', 'a1', 'b2', 'a2', 'b3', 'a3', 'a4']);
  });

  it('never runs more than `concurrency` jobs, and runs every job exactly once (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 3 }),
        fc.array(fc.tuple(fc.constantFrom('a', 'b', 'c', 'd'), fc.boolean()), { minLength: 1, maxLength: 40 }),
        async (concurrency, jobs) => {
          const q = new FairWorkQueue({ name: 'r', concurrency, maxPendingPerOrganisation: 1000 });
          let running = 0;
          let peak = 0;
          const ran: number[] = [];
          const results = jobs.map(([org, fails], i) =>
            q
              .run(org, async () => {
                running++;
                peak = Math.max(peak, running);
                await tick();
                running--;
                ran.push(i);
                if (fails) throw new Error('job failed');
                return i;
              })
              .then(
                (v) => v,
                () => -1,
              ),
          );
          const out = await Promise.all(results);
          expect(peak).to.be.at.most(concurrency);
          expect([...ran].sort((x, y) => x - y)).to.deep.equal(jobs.map((_, i) => i));
          expect(out).to.deep.equal(jobs.map(([, fails], i) => (fails ? -1 : i)));
          expect(q.pending('a') + q.pending('b') + q.pending('c') + q.pending('d')).to.equal(0);
        },
      ),
      { numRuns: 60 },
    );
  });

  it('an organisation beyond its pending bound gets TooManyRequests with a Retry-After; others do not', async () => {
    const q = new FairWorkQueue({ name: 'nl-01', concurrency: 1, maxPendingPerOrganisation: 3 });
    const g = gate();
    const accepted = [1, 2, 3].map(() => q.run('org-a', () => g.done));
    let refused: unknown;
    await q.run('org-a', () => g.done).catch((e) => (refused = e));
    expect(refused).to.be.instanceOf(KmsError);
    const e = refused as KmsError;
    expect(e.code).to.equal('TooManyRequests');
    expect(e.retryAfterSeconds).to.be.a('number').and.at.least(1);
    expect(e.message).to.match(/org-a/).and.match(/3/).and.match(/nl-01/);
    // another organisation still gets in, and system work (unbounded) too
    const other = q.run('org-b', () => g.done);
    const system = q.run('org-a', () => g.done, { bounded: false });
    g.open();
    await Promise.all([...accepted, other, system]);
    // once the work drained, org-a is accepted again
    expect(await q.run('org-a', async () => 'again')).to.equal('again');
  });

  it('a failed job frees its slot and its pending count', async () => {
    const q = new FairWorkQueue({ name: 'r', concurrency: 1, maxPendingPerOrganisation: 1 });
    await q.run('org-a', () => Promise.reject(new Error('token said no'))).catch(() => undefined);
    expect(q.pending('org-a')).to.equal(0);
    expect(await q.run('org-a', async () => 7)).to.equal(7);
  });
});
