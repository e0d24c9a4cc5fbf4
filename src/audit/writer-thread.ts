/**
 * The audit writer thread. The main thread posts batches of stamped events; this thread
 * coalesces whatever has arrived into one guarded INSERT (AuditChainWriter) and posts back which
 * batches are durably committed. Its event loop does nothing else, so a commit starts the moment
 * the previous one ends instead of waiting behind the HTTP work on the main loop.
 */
import { parentPort, Worker, workerData } from 'node:worker_threads';
import { Database } from '../store/database.js';
import { AuditChainWriter, type AuditSink, type StoredAuditEventDraft } from './audit-log.js';

interface Submit {
  id: number;
  events: StoredAuditEventDraft[];
}
interface Reply {
  ids: number[];
  error?: string;
}

const MAX_ROWS = 1000;

async function runWriter(dataDir: string): Promise<void> {
  const db = await Database.open(dataDir);
  const writer = new AuditChainWriter(db);
  const inbox: Submit[] = [];
  let busy = false;
  const drain = async () => {
    busy = true;
    while (inbox.length) {
      const take: Submit[] = [];
      let rows = 0;
      while (inbox.length && rows + inbox[0]!.events.length <= MAX_ROWS) {
        const s = inbox.shift()!;
        take.push(s);
        rows += s.events.length;
      }
      if (!take.length) take.push(inbox.shift()!);
      const reply: Reply = { ids: take.map((s) => s.id) };
      try {
        await writer.append(take.flatMap((s) => s.events));
      } catch (e) {
        reply.error = (e as Error).message;
      }
      parentPort!.postMessage(reply);
    }
    busy = false;
  };
  parentPort!.on('message', (m: Submit | 'close') => {
    if (m === 'close') {
      void (async () => {
        while (busy || inbox.length) await new Promise((r) => setTimeout(r, 5));
        await db.close();
        process.exit(0);
      })();
      return;
    }
    inbox.push(m);
    if (!busy) void drain();
  });
  parentPort!.postMessage('ready');
}

/** The main-thread side: an AuditSink backed by the writer thread. */
export class ThreadedAuditSink implements AuditSink {
  readonly pipelined = true;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();

  private constructor(private readonly worker: Worker) {
    worker.on('message', (m: Reply | 'ready') => {
      if (m === 'ready') return;
      for (const id of m.ids) {
        const w = this.waiting.get(id);
        this.waiting.delete(id);
        if (m.error) w?.reject(new Error(`audit commit failed: ${m.error}`));
        else w?.resolve();
      }
    });
    worker.on('error', (e) => {
      for (const w of this.waiting.values()) w.reject(e);
      this.waiting.clear();
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
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ id, events } satisfies Submit);
    });
  }

  async close(): Promise<void> {
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.postMessage('close');
    await exited;
  }
}

if (parentPort && workerData?.dataDir) void runWriter(workerData.dataDir as string);
