import { expect } from 'chai';
import { TokenBurst } from '../../src/token/token-burst.js';
import { ChangeFeed } from '../../src/store/change-feed.js';
import type { ChangeEntry, ChangeSignal, ChangesRepository } from '../../src/store/store.js';

const nextTurn = () => new Promise((r) => setImmediate(r));

describe('work shared by the requests of one event-loop turn', () => {
  describe('ChangeFeed.check', () => {
    /** A signal and change log held in memory; `reads` counts looks at the signal. */
    function fakeStore() {
      const log: ChangeEntry[] = [];
      let generation = 0;
      const state = { reads: 0 };
      const signal: ChangeSignal = {
        current: () => {
          state.reads++;
          return String(generation);
        },
        bump: async () => void generation++,
        close: () => undefined,
      };
      const changes: ChangesRepository = {
        record: async (identity) => void log.push({ seq: log.length + 1, identity } as ChangeEntry),
        since: async (seq) => log.filter((e) => e.seq > seq),
        last: async () => log.length,
      };
      return {
        state,
        signal,
        changes,
        write: async (identity: string) => {
          await changes.record(identity);
          await signal.bump();
        },
      };
    }

    it('looks at the signal once per turn, and a write finished before a later turn is replayed in it', async () => {
      const s = fakeStore();
      const seen: string[] = [];
      const feed = new ChangeFeed(s.signal, s.changes, async (ids) => void seen.push(...ids));
      await feed.init();
      await nextTurn();
      const before = s.state.reads;
      for (let i = 0; i < 10; i++) expect(feed.check()).to.equal(undefined);
      expect(s.state.reads - before, 'ten requests in one turn: one look').to.equal(1);

      await s.write('key-1'); // another process's write, finished before the next turn's requests
      await nextTurn();
      const replay = feed.check();
      expect(replay, 'the next turn sees the signal move').to.not.equal(undefined);
      expect(feed.check(), 'a second request of that turn waits for the same replay').to.equal(replay);
      await replay;
      expect(seen).to.deep.equal(['key-1']);
    });
  });

  describe('TokenBurst', () => {
    it('runs the calls of one turn together, in order, each answering its own caller', async () => {
      const burst = new TokenBurst();
      const ran: number[] = [];
      const calls = [1, 2, 3, 4].map((n) =>
        burst.run(() => {
          ran.push(n);
          if (n === 3) throw new Error('token failed for 3');
          return n * 10;
        }),
      );
      expect(ran, 'nothing runs before the turn’s check phase').to.deep.equal([]);
      const results = await Promise.allSettled(calls);
      expect(ran).to.deep.equal([1, 2, 3, 4]);
      expect(results.map((r) => (r.status === 'fulfilled' ? r.value : (r.reason as Error).message))).to.deep.equal([10, 20, 'token failed for 3', 40]);
      expect(await burst.run(() => 'later turn')).to.equal('later turn');
    });
  });
});
