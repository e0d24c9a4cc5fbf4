#!/usr/bin/env node
/**
 * kmsd — the daemon. `kmsd --config FILE` (or KMSD_CONFIG). With `workers` > 1 (0 = one per
 * core) a primary process supervises that many identical workers that share the port, the
 * token, the data dir and MongoDB; a crashed worker is restarted.
 */
import cluster from 'node:cluster';
import os from 'node:os';
import { Command } from 'commander';

// Async PKCS#11 calls, SQLite and fs share libuv's pool; the default 4 threads would queue them.
process.env.UV_THREADPOOL_SIZE ??= '16';

const program = new Command()
  .name('kmsd')
  .description('HSM-backed KMS daemon')
  .option('-c, --config <file>', 'config file (YAML or JSON); default $KMSD_CONFIG')
  .option('--check-config', 'validate the config and exit')
  .parse();
const opts = program.opts<{ config?: string; checkConfig?: boolean }>();

const { ConfigError, configPathFromEnv, loadConfig } = await import('../config/load.js');
let config;
try {
  config = loadConfig(configPathFromEnv(opts.config));
} catch (e) {
  if (e instanceof ConfigError) {
    process.stderr.write(`kmsd: ${e.message}\n`);
    process.exit(2);
  }
  throw e;
}
if (opts.checkConfig) {
  process.stdout.write('config OK\n');
  process.exit(0);
}

const workers = config.workers === 0 ? os.availableParallelism() : config.workers;

if (workers > 1 && cluster.isPrimary) {
  const { runSupervisor } = await import('../cluster/supervisor.js');
  try {
    // PostgreSQL: every worker appends to the chain itself (under the chain lock); SQLite: the primary writes.
    await runSupervisor(workers, config.logLevel, config.store?.postgres ? undefined : config.dataDir);
  } catch (e) {
    // e.g. the data dir cannot be opened for the cluster's audit writer
    process.stderr.write(`kmsd: failed to start: ${(e as Error).message}\n`);
    process.exit(1);
  }
} else {
  // The tokens' C_Initialize (seconds on a large token) starts on threads before the daemon's
  // modules load (~0.4 s); startDaemon waits for it where it needs the tokens.
  const { Pkcs11Library } = await import('../token/module.js');
  Pkcs11Library.initializeAllInBackground(config.regions);
  const { startDaemon } = await import('../daemon.js');
  const { createLogger } = await import('../log.js');
  const log = createLogger(config.logLevel);
  try {
    const d = await startDaemon(config, log);
    const shutdown = async () => {
      await d.stop();
      process.exit(0);
    };
    process.once('SIGTERM', () => void shutdown());
    process.once('SIGINT', () => void shutdown());
    if (process.send) process.send({ kmsd: 'ready', port: d.port, xksPort: d.xksPort, awsPort: d.awsPort });
  } catch (e) {
    log.error('kmsd failed to start', { error: (e as Error).stack ?? String(e) });
    process.exit(1);
  }
}
