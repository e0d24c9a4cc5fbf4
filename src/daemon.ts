import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import cluster from 'node:cluster';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import type { Logger } from 'winston';
import { answerClientErrors, KMS_CLIENT_ERROR } from './http/client-error.js';
import { createRequestListener } from './api/app.js';
import type { Services } from './api/services.js';
import { AuditLog } from './audit/audit-log.js';
import { ThreadedAuditSink } from './audit/writer-thread.js';
import { ClusterAuditSink } from './audit/cluster-sink.js';
import { localProcessAlive, NodeLeaseKeeper } from './cluster/liveness.js';
import { CLOCK_CHANGED, PRINCIPALS_CHANGED, PrincipalDirectory } from './auth/principals.js';
import { ByokService } from './byok/byok-service.js';
import { Clock, clampOffsetMs, MAX_CLOCK_OFFSET_MS } from './clock.js';
import { readSecret } from './config/load.js';
import type { Config } from './config/schema.js';
import { CryptoService } from './crypto/crypto-service.js';
import { validation } from './errors.js';
import { KeyCache } from './keys/key-cache.js';
import { KeyService } from './keys/key-service.js';
import { createLogger } from './log.js';
import { Metrics } from './metrics.js';
import { reconcileRegion } from './rotation/reconcile.js';
import { RotationService } from './rotation/rotation-service.js';
import { Scheduler } from './scheduler/scheduler.js';
import { ChangeFeed } from './store/change-feed.js';
import { openStore } from './store/open.js';
import type { Store } from './store/store.js';
import { Pkcs11Library } from './token/module.js';
import { RegionToken } from './token/region-token.js';
import { RegionRegistry } from './token/regions.js';
import type { XksServer } from './xks/server.js';
import type { AwsServer } from './aws/server.js';

export const VERSION = '0.1.0';
const CLOCK_SETTING = 'clock_offset_ms';
const SESSIONS_PER_REGION = 8;
/** Session working copies of secret keys per region (see RegionToken): ~1 KB each in the token. */
const WORKING_COPIES_PER_REGION = 10_000;
/** Threads that run C_SignInit + C_Sign off the event loop (see token/signer-threads.ts). */
const SIGNER_THREADS_PER_REGION = 2;

/**
 * How this process signs. With at least one kmsd process per core (`workers: 0`, the shipped
 * configuration) EdDSA/ECDSA signatures run on the event loop (RegionToken.sign: a thread hop
 * costs CPU and buys no parallelism when every core already serves requests), and one thread
 * takes what exceeds the loop's budget and the slow mechanisms. With fewer processes than
 * cores the threads sign, so the spare cores do.
 */
function signingSetup(config: Config): { signerThreads: number; signOnLoop: boolean } {
  const cores = os.availableParallelism();
  const processes = config.workers === 0 ? cores : config.workers;
  return processes >= cores ? { signerThreads: 1, signOnLoop: true } : { signerThreads: SIGNER_THREADS_PER_REGION, signOnLoop: false };
}

export interface RunningDaemon {
  services: Services;
  port: number;
  xksPort?: number;
  awsPort?: number;
  stop(): Promise<void>;
}

/** A random id made once per data dir: names this installation's scheduler job in MongoDB. */
function installationId(store: Store): Promise<string> {
  return store.settings.getOrInit('installation_id', randomBytes(8).toString('hex'));
}

async function loadClockOffset(store: Store, clock: Clock, log: Logger): Promise<void> {
  const value = await store.settings.get(CLOCK_SETTING);
  const stored = value ? Number(value) : 0;
  // An older kmsd let the offset grow without bound; such a value is clamped (and said so), not refused.
  if (clampOffsetMs(stored) !== stored)
    log.warn('testing clock offset out of range: clamped to 0..100 years', { storedOffsetMs: value, usedOffsetMs: clampOffsetMs(stored) });
  clock.setOffset(stored);
}

/** Key versions the metadata holds in a region: about how many objects its token holds. */
function versionsIn(cache: KeyCache, region: string): number {
  let n = 0;
  for (const k of cache.all()) if (k.region === region) n += k.versions.length;
  return n;
}

/**
 * The composition root: config → store → tokens → services → HTTP. Everything mutable lives
 * in the objects built here; nothing below reads env or files on its own.
 */
export async function startDaemon(config: Config, log: Logger = createLogger(config.logLevel)): Promise<RunningDaemon> {
  const startedAtMs = Date.now();
  // C_Initialize of each token's library (seconds on a large SoftHSM2 token: it reads every
  // object) runs on a thread meanwhile; the regions connect once it is done (connectAll).
  Pkcs11Library.initializeAllInBackground(config.regions);
  const metrics = new Metrics();
  const clock = new Clock();
  const store = await openStore(config, log, {
    query: (seconds) => metrics.storeQuery.observe(seconds),
    failover: () => metrics.storeFailovers.inc(),
  });
  const cache = new KeyCache(store.keys);
  const principals = new PrincipalDirectory(config.principals, store.principals);
  // SQLite: a cluster worker sends its rows to the primary (the data dir's one writer); else a
  // writer thread with its own connection (started while the metadata loads). PostgreSQL: every
  // process appends under the chain lock.
  const auditSink = store.kind === 'postgres' ? undefined : cluster.isWorker ? new ClusterAuditSink() : ThreadedAuditSink.start(config.dataDir);

  const feed = new ChangeFeed(store.changeSignal(), store.changes, async (ids) => {
    if (ids.delete(PRINCIPALS_CHANGED)) await principals.reload();
    if (ids.delete(CLOCK_CHANGED)) await loadClockOffset(store, clock, log);
    await cache.reload(ids);
  });
  const loaded = (async () => {
    await feed.init(); // first: a change committed during the load is replayed, not lost
    await Promise.all([cache.loadAll(), principals.reload(), loadClockOffset(store, clock, log)]);
  })();
  const [sink] = await Promise.all([auditSink, loaded]);
  const audit = new AuditLog(
    store.audit,
    clock,
    (n, seconds) => {
      metrics.auditBatch.observe(n);
      metrics.auditCommit.observe(seconds);
    },
    sink,
  );
  if (config.testing.clockControl) log.warn('testing.clockControl is ON: the daemon clock can be moved over HTTP. Never use this in production.');

  const installation = await installationId(store);
  // Cluster mode: liveness of another node's process comes from its lease in the store.
  const lease = store.kind === 'postgres' ? new NodeLeaseKeeper(store.leases, (e) => log.warn('node lease renewal failed', { error: String(e) })) : undefined;
  await lease?.start();
  const creatorAlive = lease?.alive ?? localProcessAlive;
  const tokens = new Map<string, RegionToken>();
  const signing = signingSetup(config);
  for (const r of config.regions) {
    const pin = readSecret(r.pinEnv, r.pinFile, `regions[${r.name}] PIN`);
    // labelled children resolved once per operation name: no label hashing per token call
    const timers = new Map<string, { observe(v: number): void }>();
    const timer = (op: string, seconds: number) => {
      let t = timers.get(op);
      if (!t) timers.set(op, (t = metrics.tokenOp.labels(r.name, op)));
      t.observe(seconds);
    };
    tokens.set(r.name, new RegionToken({ region: r.name, modulePath: r.pkcs11Module, label: r.tokenLabel, pin, sessions: SESSIONS_PER_REGION, workingCopies: WORKING_COPIES_PER_REGION, ...signing }, timer));
  }
  // The registry's on-connect step needs the key service, which needs the registry: bound below.
  // eslint-disable-next-line prefer-const
  let keys!: KeyService;
  const enabledOrgs = config.organisations.filter((o) => o.kmsEnabled).map((o) => o.identity);
  const reconcile = async (region: string) => {
    const t = tokens.get(region)!;
    if (!t.available) return;
    const r = await reconcileRegion(t, store.keys, log, startedAtMs, installation, creatorAlive);
    if (r.destroyed) metrics.orphans.inc({ region, action: 'destroyed' }, r.destroyed);
    if (r.inFlight) metrics.orphans.inc({ region, action: 'in_flight' }, r.inFlight);
  };
  // A destroyed key's working copies go with it, whichever process destroyed it.
  cache.onRemoved = (k) => {
    for (const v of k.versions) tokens.get(k.region)?.forget(Buffer.from(v.ckaId));
  };
  const regions = new RegionRegistry(
    tokens,
    log,
    async (region) => {
      await reconcile(region);
      await keys.ensureDefaultKeys(enabledOrgs, region);
    },
    (region) => versionsIn(cache, region),
  );

  keys = new KeyService(store, cache, feed, regions, clock, audit, log, installation);
  const rotation = new RotationService(store, keys, feed, regions, clock, audit, log, config.rotation.maxManualRotations, (trigger, n) =>
    metrics.rotations.inc({ trigger }, n),
  );
  const crypto = new CryptoService(regions);
  const byok = new ByokService({
    store,
    creatorAlive,
    regions,
    keys,
    rotation,
    clock,
    log,
    allowPlaintextExport: config.export.allowPlaintext,
    maxOpenImportTokens: config.limits.maxOpenImportTokens,
  });

  const scheduler = new Scheduler(
    config.mongodbUri,
    installation,
    config.rotation.evaluationIntervalSeconds * 1000,
    {
      evaluate: async () => {
        await feed.check();
        await rotation.rotateDue();
        await keys.destroyDue();
        await byok.sweep(); // expired import tokens: destroy their import key pairs
        for (const name of tokens.keys()) await reconcile(name);
      },
    },
    log,
  );
  scheduler.start();
  await regions.connectAll();
  regions.startRetry();


  const services: Services = {
    config,
    log,
    clock,
    keys,
    crypto,
    rotation,
    byok,
    audit,
    principals,
    regions,
    metrics,
    readiness: {
      storeKind: store.kind,
      store: async () => {
        try {
          await store.ping();
          return true;
        } catch {
          return false;
        }
      },
      mongodb: () => scheduler.connected,
    },
    advanceClock: async (seconds: number) => {
      await store.transaction(async (tx) => {
        const stored = await tx.settings.get(CLOCK_SETTING);
        // Clamped like the clock itself: a stored value beyond range (older version) counts as 100 years.
        const current = clampOffsetMs(stored ? Number(stored) : 0);
        const next = current + Math.round(seconds * 1000);
        if (!Number.isFinite(next) || next > MAX_CLOCK_OFFSET_MS)
          throw validation(
            `advanceSeconds: the testing clock may be at most 100 years (${MAX_CLOCK_OFFSET_MS / 1000} s) ahead in total; ` +
              `it is ${current / 1000} s ahead, so at most ${(MAX_CLOCK_OFFSET_MS - current) / 1000} s more`,
          );
        await tx.settings.put(CLOCK_SETTING, String(next));
        await tx.changes.record(CLOCK_CHANGED);
      });
      await feed.publish();
    },
  };

  const app = createRequestListener(services, VERSION);
  const tls = config.listen.tls;
  const server = tls
    ? https.createServer({ cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile), minVersion: 'TLSv1.2' }, app)
    : http.createServer(app);
  answerClientErrors(server, KMS_CLIENT_ERROR);
  server.keepAliveTimeout = 65_000;
  // The XKS and AWS listeners open first: once the main port answers /readyz, every listener accepts.
  let xks: XksServer | undefined;
  if (config.xks) xks = await (await import('./xks/server.js')).startXks(config.xks, services);
  let aws: AwsServer | undefined;
  // SigV4 on a thread where the process leaves a core idle (the signing threads' rule, sigv4-thread.ts).
  if (config.aws) aws = await (await import('./aws/server.js')).startAws(config.aws, services, store, { verifyOnThread: !signing.signOnLoop });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  log.info('kmsd listening', { host: config.listen.host, port, tls: Boolean(tls), xksPort: xks?.port, awsPort: aws?.port, startupMs: Date.now() - startedAtMs });

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      log.info('shutting down: no new connections, finishing in-flight requests');
      await Promise.all([
        new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeIdleConnections();
        }),
        xks?.close(),
        aws?.close(),
      ]);
      await scheduler.stop();
      await audit.close();
      await lease?.stop();
      feed.close();
      await store.close();
      await regions.stop();
      log.info('kmsd stopped');
    })());

  return { services, port, xksPort: xks?.port, awsPort: aws?.port, stop };
}
