/**
 * The audit writer thread. The main thread posts batches of stamped events; this thread
 * coalesces whatever has arrived into one guarded INSERT (AuditChainWriter) and posts back which
 * batches are durably committed. Its event loop does nothing else, so a commit starts the moment
 * the previous one ends instead of waiting behind the HTTP work on the main loop.
 */
import { parentPort, Worker, workerData } from 'node:worker_threads';
import { SqliteStore } from '../store/sqlite/sqlite-store.js';
import { AuditChainWriter, type AuditSink, type StoredAuditEventDraft } from './audit-log.js';
import { CommitQueue, PendingAppends } from './commit-queue.js';

interface Submit {
  id: number;
  events: StoredAuditEventDraft[];
}
interface Reply {
  ids: number[];
  error?: string;
}

async function runWriter(dataDir: string): Promise<void> {
  const store = await SqliteStore.open(dataDir);
  const queue = new CommitQueue(new AuditChainWriter(store.audit));
  parentPort!.on('message', (m: Submit | 'close') => {
    if (m === 'close') {
      void (async () => {
        while (!queue.idle) await new Promise((r) => setTimeout(r, 5));
        await store.close();
        process.exit(0);
      })();
      return;
    }
    queue.submit(m.events, (error) => parentPort!.postMessage({ ids: [m.id], error } satisfies Reply));
  });
  parentPort!.postMessage('ready');
}

/** The main-thread side: an AuditSink backed by the writer thread. */
export class ThreadedAuditSink implements AuditSink {
  readonly pipelined = true;
  private readonly pending = new PendingAppends();
  /** Set when the writer thread died: nothing can be appended any more (/readyz reports it). */
  broken?: string;
  private closing = false;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (m: Reply | 'ready') => {
      if (m === 'ready') return;
      for (const id of m.ids) this.pending.settle(id, m.error);
    });
    worker.on('error', (e) => {
      this.broken = `audit writer thread failed: ${e.message}`;
      this.pending.failAll(e);
    });
    worker.on('exit', (code) => {
      if (this.closing) return;
      this.broken ??= `audit writer thread exited (${code})`;
      this.pending.failAll(new Error(this.broken));
    });
  }

  static async start(dataDir: string): Promise<ThreadedAuditSink> {
    const worker = new Worker(new URL(import.meta.url), { workerData: { dataDir } });
    await new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
    });
    return new ThreadedAuditSink(worker);
  }

  append(events: StoredAuditEventDraft[]): Promise<void> {
    // A message to a dead thread would never be answered: fail now instead of hanging the request.
    if (this.broken) return Promise.reject(new Error(this.broken));
    return this.pending.add((id) => this.worker.postMessage({ id, events } satisfies Submit));
  }

  async close(): Promise<void> {
    this.closing = true;
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.postMessage('close');
    await exited;
  }
}

if (parentPort && workerData?.dataDir) void runWriter(workerData.dataDir as string);
