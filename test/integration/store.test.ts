import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { AuditLog } from '../../src/audit/audit-log.js';
import { Clock } from '../../src/clock.js';
import { NodeLeaseKeeper } from '../../src/cluster/liveness.js';
import type { KeyRecord } from '../../src/keys/model.js';
import { ChangeFeed } from '../../src/store/change-feed.js';
import { PostgresStore } from '../../src/store/postgres/postgres-store.js';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { UniqueViolation, type Store } from '../../src/store/store.js';
import { sharedPostgres } from '../helpers/hooks.js';
import { TMP_ROOT } from '../helpers/paths.js';
import { PostgresServer } from '../helpers/postgres.js';

/** Where one store lives: a data dir or a PostgreSQL database; `open` may be called many times (several "nodes"). */
interface Location {
  open(): Promise<Store>;
  /** Tampers with the audit table directly, bypassing kmsd. */
  tamper(sql: string): Promise<void>;
  /** PostgreSQL only: runs SQL on the store's database as an operator would. */
  query<T = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<T[]>;
}

const BACKENDS: Record<'sqlite' | 'postgres', () => Promise<Location>> = {
  async sqlite() {
    const dir = path.join(TMP_ROOT, `store-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    return {
      open: () => SqliteStore.open(dir),
      async tamper(sql) {
        const s = await SqliteStore.open(dir);
        await s.writeStatement(sql, []);
        await s.close();
      },
      query: () => Promise.reject(new Error('PostgreSQL only')),
    };
  },
  async postgres() {
    const uri = await (await sharedPostgres()).createDatabase('store');
    return {
      open: () => PostgresStore.open({ uri }),
      tamper: async (sql) => void (await PostgresServer.sql(uri, sql)),
      query: <T>(sql: string, params?: unknown[]) => PostgresServer.sql<T>(uri, sql, params),
    };
  },
};

let n = 0;
function newKey(over: Partial<KeyRecord> = {}): KeyRecord {
  const now = new Date().toISOString();
  const identity = `kms-store-test-${++n}-${Math.random().toString(36).slice(2, 8)}`;
  return {
    identity,
    organisation: 'org-1',
    region: 'r1',
    project: '',
    name: identity,
    slug: identity,
    description: '',
    labels: { a: 'b' },
    annotations: {},
    keyType: 'aes256-gcm96',
    status: 'active',
    statusBeforeDeletion: null,
    exportAllowed: false,
    imported: false,
    allowRotation: true,
    isDefault: false,
    rotationEnabled: false,
    rotationPeriodDays: null,
    lastRotationAt: now,
    nextRotationAt: null,
    manualRotations: 0,
    latestVersion: 1,
    minDecryptionVersion: 1,
    deletionAt: null,
    objectVersion: 1,
    createdAt: now,
    updatedAt: now,
    versions: [{ version: 1, ckaId: `${identity}/v1`, status: 'enabled', origin: 'generated', createdAt: now }],
    ...over,
  } as KeyRecord;
}

/** Polls `fn` until it answers (bounded: 20 s). */
async function waitUntil<T>(fn: () => Promise<T | undefined>): Promise<T> {
  for (let i = 0; i < 400; i++) {
    const v = await fn();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('condition not reached in 20 s');
}

/** Adds one version the way rotation does: re-read in the transaction, then compare-and-set. */
async function addVersion(store: Store, identity: string): Promise<number> {
  return store.transaction(async (tx) => {
    const cur = (await tx.keys.load(identity))!;
    const version = cur.latestVersion + 1;
    await tx.keys.insertVersion(identity, { version, ckaId: `${identity}/v${version}`, status: 'enabled', origin: 'generated', createdAt: new Date().toISOString() });
    if (!(await tx.keys.update(identity, cur.objectVersion, { latestVersion: version }))) throw new Error('lost the compare-and-set');
    return version;
  });
}

for (const [kind, makeLocation] of Object.entries(BACKENDS)) {
  describe(`store (${kind}): repositories, transactions, change feed, audit chain`, function () {
    this.timeout(120_000);
    let loc: Location;
    let a: Store;
    let b: Store;

    before(async () => {
      loc = await makeLocation();
      a = await loc.open();
      b = await loc.open(); // a second node on the same store
    });
    after(async () => {
      await a?.close();
      await b?.close();
    });

    it(`is a ${kind} store`, () => {
      expect(a.kind).to.equal(kind);
    });

    it('migrations started by several nodes at once are applied exactly once, and re-running applies nothing', async () => {
      // Several rounds: on SQLite a fresh file's switch to WAL used to fail with SQLITE_BUSY now and then.
      for (let round = 0; round < 8; round++) {
        const fresh = await makeLocation();
        const nodes = await Promise.all([fresh.open(), fresh.open(), fresh.open()]);
        try {
          const s = nodes[0] as SqliteStore | PostgresStore;
          const versions = await s.migrationVersions();
          expect(versions[0]).to.equal(1);
          expect(new Set(versions).size).to.equal(versions.length);
          expect(await s.migrate()).to.equal(0);
          expect(await nodes[1]!.isEmpty()).to.equal(true);
        } finally {
          await Promise.all(nodes.map((x) => x.close()));
        }
      }
    });

    it('keys: insert, load from another node, one slug per scope, compare-and-set update', async () => {
      const k = newKey();
      await a.transaction((tx) => tx.keys.insert(k));
      const loaded = await b.keys.load(k.identity);
      expect(loaded).to.deep.equal(k);
      expect((await b.keys.loadAll()).some((x) => x.identity === k.identity)).to.equal(true);

      const dup = newKey({ slug: k.slug });
      let err: unknown;
      await b.transaction((tx) => tx.keys.insert(dup)).catch((e) => (err = e));
      expect(err).to.be.instanceOf(UniqueViolation);
      expect(await a.keys.load(dup.identity), 'nothing of the refused insert remains').to.equal(undefined);

      expect(await a.transaction((tx) => tx.keys.update(k.identity, 1, { status: 'disabled' }))).to.equal(true);
      expect(await b.transaction((tx) => tx.keys.update(k.identity, 1, { status: 'active' })), 'stale objectVersion').to.equal(false);
      const after = (await b.keys.load(k.identity))!;
      expect(after.status).to.equal('disabled');
      expect(after.objectVersion).to.equal(2);
      expect((await a.keys.allCkaIds()).has(`${k.identity}/v1`)).to.equal(true);
    });

    it('versions: concurrent rotations from two nodes give contiguous versions', async () => {
      const k = newKey();
      await a.transaction((tx) => tx.keys.insert(k));
      const made = await Promise.all(Array.from({ length: 12 }, (_, i) => addVersion(i % 2 ? a : b, k.identity)));
      expect([...made].sort((x, y) => x - y)).to.deep.equal(Array.from({ length: 12 }, (_, i) => i + 2));
      const after = (await a.keys.load(k.identity))!;
      expect(after.latestVersion).to.equal(13);
      expect(after.versions.map((v) => v.version)).to.deep.equal(Array.from({ length: 13 }, (_, i) => i + 1));
    });

    it('a transaction that fails leaves nothing behind (rolled back)', async () => {
      const k = newKey();
      await a
        .transaction(async (tx) => {
          await tx.keys.insert(k);
          throw new Error('abort');
        })
        .catch(() => undefined);
      expect(await b.keys.load(k.identity)).to.equal(undefined);
    });

    it('scheduled-rotation claims: a due key is claimed by exactly one of two nodes', async () => {
      const k = newKey({ rotationEnabled: true, rotationPeriodDays: 1, nextRotationAt: '2000-01-01T00:00:00.000Z' });
      await a.transaction((tx) => tx.keys.insert(k));
      const nowIso = new Date().toISOString();
      const nowMs = Date.now();
      const [ca, cb] = await Promise.all([
        a.transaction((tx) => tx.keys.claimDue(nowIso, nowMs, 'node-a', nowMs + 60_000, 1000)),
        b.transaction((tx) => tx.keys.claimDue(nowIso, nowMs, 'node-b', nowMs + 60_000, 1000)),
      ]);
      expect([...ca, ...cb].filter((id) => id === k.identity)).to.have.length(1);
    });

    it('import tokens: of concurrent uses of one token on two nodes exactly one succeeds', async () => {
      const digest = `digest-${Math.random().toString(36).slice(2)}`;
      await a.importTokens.insert({
        tokenSha256: digest,
        region: 'r1',
        organisation: 'org-1',
        project: '',
        keyType: 'aes256-gcm96',
        wrappingAlgorithm: 'RSA_AES_KEY_WRAP_SHA_256',
        ckaId: `import/${digest}`,
        expiresAt: '2999-01-01T00:00:00.000Z',
        usedAt: null,
        createdAt: new Date().toISOString(),
      });
      const results = await Promise.all(Array.from({ length: 8 }, (_, i) => (i % 2 ? a : b).importTokens.consume(digest, new Date().toISOString())));
      expect(results.filter(Boolean)).to.have.length(1);
      expect((await b.importTokens.byDigest(digest))!.usedAt).to.be.a('string');
      expect((await a.importTokens.byCkaId(`import/${digest}`))!.tokenSha256).to.equal(digest);
    });

    it('settings: installation id is set once; concurrent clock additions all count', async () => {
      const [x, y] = await Promise.all([a.settings.getOrInit('installation_id_t', 'x'), b.settings.getOrInit('installation_id_t', 'y')]);
      expect(x).to.equal(y);
      await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).transaction((tx) => tx.settings.addInteger('clock_t', 1000))));
      expect(await a.settings.get('clock_t')).to.equal('10000');
    });

    it('node leases: a creator counts as alive while its lease runs, not after it expired or was released', async () => {
      const now = Date.now();
      await a.leases.renew({ nodeId: 'host-x/4242/aa', host: 'host-x', pid: 4242, expiresAtMs: now + 30_000 });
      await a.leases.renew({ nodeId: 'host-y/4343/bb', host: 'host-y', pid: 4343, expiresAtMs: now - 1 });
      const live = await b.leases.livePids(now);
      expect(live.has(4242)).to.equal(true);
      expect(live.has(4343), 'expired lease').to.equal(false);
      const keeper = new NodeLeaseKeeper(b.leases, () => undefined);
      expect(await keeper.alive(4242)).to.equal(true);
      expect(await keeper.alive(4343)).to.equal(false);
      await a.leases.release('host-x/4242/aa');
      expect(await keeper.alive(4242), 'released lease').to.equal(false);
    });

    it('change feed: a change committed on one node is replayed by the other', async () => {
      const seen: string[] = [];
      const feedB = new ChangeFeed(b.changeSignal(), b.changes, async (ids) => void seen.push(...ids));
      const feedA = new ChangeFeed(a.changeSignal(), a.changes, async () => undefined);
      await Promise.all([feedA.init(), feedB.init()]);
      try {
        const k = newKey();
        await a.transaction((tx) => tx.keys.insert(k));
        await feedA.publish();
        // the signal travels (file stat or NOTIFY); B replays the log when it sees it move
        for (let i = 0; i < 200 && !seen.includes(k.identity); i++) {
          await feedB.check();
          if (!seen.includes(k.identity)) await new Promise((r) => setTimeout(r, 25));
        }
        expect(seen).to.include(k.identity);
      } finally {
        feedA.close();
        feedB.close();
      }
    });

    if (kind === 'postgres')
      it('change feed: a change whose notification was missed is replayed once the LISTEN connection reconnects', async () => {
        const seen: string[] = [];
        const feedB = new ChangeFeed(b.changeSignal(), b.changes, async (ids) => void seen.push(...ids));
        await feedB.init();
        const listeners = async () =>
          (await loc.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'")).map((r) => r.pid);
        try {
          const before = await waitUntil(async () => ((await listeners()).length ? await listeners() : undefined));
          // a change whose notification B never gets (committed without NOTIFY, as if sent while B was
          // disconnected), then B's LISTEN connection is cut: only the re-read on reconnect can find it
          await new Promise((r) => setTimeout(r, 200));
          await feedB.check(); // the replay every new LISTEN connection triggers
          const missed = `missed-${Math.random().toString(36).slice(2)}`;
          await loc.query(`INSERT INTO key_changes (key_identity) VALUES ('${missed}')`);
          await new Promise((r) => setTimeout(r, 200));
          await feedB.check();
          expect(seen, 'no notification: B has not replayed it').to.not.include(missed);
          await loc.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE $1', ['LISTEN%']);
          await waitUntil(async () => {
            await feedB.check();
            return seen.includes(missed) || undefined;
          });
          await waitUntil(async () => ((await listeners()).some((pid) => !before.includes(pid)) ? true : undefined));
        } finally {
          feedB.close();
        }
      });

    it('audit: concurrent group commits from two nodes form one valid chain; tampering is detected', async () => {
      const clock = new Clock();
      const logA = new AuditLog(a.audit, clock);
      const logB = new AuditLog(b.audit, clock);
      const before = await a.audit.count();
      await Promise.all(
        Array.from({ length: 120 }, (_, i) =>
          (i % 2 ? logA : logB).record({ action: 'kms.test', outcome: 'success', organisation: 'org-1', detail: { i, s: 'ü"\\' } }),
        ),
      );
      const v = await logB.verify();
      expect(v).to.deep.equal({ valid: true, events: before + 120 });
      const mine = await logA.query({ organisation: 'org-1', action: 'kms.test', limit: 1000 });
      expect(mine).to.have.length(120);
      expect(mine.map((e) => e.seq)).to.deep.equal([...mine.map((e) => e.seq)].sort((x, y) => x - y));

      await loc.tamper(`UPDATE audit_events SET outcome = 'denied' WHERE seq = ${before + 7}`);
      expect(await logA.verify()).to.deep.include({ valid: false, brokenAt: before + 7 });
      await loc.tamper(`UPDATE audit_events SET outcome = 'success' WHERE seq = ${before + 7}`);
      expect((await logA.verify()).valid).to.equal(true);
      await logA.close();
      await logB.close();
    });
  });
}
