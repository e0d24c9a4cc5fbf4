import cluster, { type Worker } from 'node:cluster';
import { serveClusterAudit } from '../audit/cluster-sink.js';
import { createLogger } from '../log.js';

/**
 * Primary process of a multi-worker kmsd: forks the workers, restarts one that dies (with a
 * short back-off so a crash loop does not spin), and on SIGTERM/SIGINT asks every worker to
 * shut down gracefully before exiting itself. It is also the cluster's one audit writer
 * (audit/cluster-sink.ts) on SQLite: it opens the data dir (and migrates it) before any worker starts.
 */
export async function runSupervisor(count: number, level: string, sqliteDataDir: string | undefined): Promise<void> {
  const log = createLogger(level);
  const audit = sqliteDataDir ? await serveClusterAudit(sqliteDataDir) : { close: async () => undefined };
  let stopping = false;
  const restarts: number[] = [];

  const fork = (): Worker => cluster.fork();
  for (let i = 0; i < count; i++) fork();

  // Tell a parent process (tests, the bench) once every worker is serving.
  const ready = new Set<number>();
  let announced = false;
  cluster.on('message', (worker, m: { kmsd?: string; port?: number }) => {
    if (m?.kmsd !== 'ready') return;
    ready.add(worker.id);
    if (!announced && ready.size >= count && process.send) {
      announced = true;
      process.send({ kmsd: 'ready', port: m.port, xksPort: (m as { xksPort?: number }).xksPort, awsPort: (m as { awsPort?: number }).awsPort, workers: count });
    }
  });
  log.info('kmsd supervisor started', { workers: count });

  cluster.on('exit', (worker, code, signal) => {
    if (stopping) {
      if (Object.keys(cluster.workers ?? {}).length === 0) {
        log.info('all workers stopped');
        void audit.close().finally(() => process.exit(0));
      }
      return;
    }
    const now = Date.now();
    restarts.push(now);
    while (restarts.length && restarts[0]! < now - 60_000) restarts.shift();
    const delay = restarts.length > 5 ? 5000 : 200;
    log.warn('worker exited; restarting', { pid: worker.process.pid, code, signal, delayMs: delay });
    setTimeout(() => {
      if (!stopping) fork();
    }, delay);
  });

  const shutdown = () => {
    if (stopping) return;
    stopping = true;
    log.info('supervisor shutting down workers');
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
    setTimeout(() => process.exit(0), 30_000).unref();
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}
