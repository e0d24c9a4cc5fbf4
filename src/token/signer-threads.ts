/**
 * Asymmetric signing on worker threads: C_SignInit and C_Sign both run off the main thread.
 *
 * Why: with pkcs11js only C_Sign has an async form; C_SignInit stays on the event loop, and on
 * SoftHSM2 it is the expensive half of the set-up (it decrypts the private key object and
 * builds the key: ~60 µs for Ed25519, measured), plus ~30 µs to start the async call. At
 * ~2,000 signatures/s that was a fifth of the main thread. A worker does init + sign
 * synchronously on its own session (sessions and object handles are per process, so the
 * main thread's handles are valid here); the main thread only posts and receives.
 *
 * A worker never initialises or finalises the library: the main thread owns that, and waits
 * until no job is in flight (`inFlight`) before it re-initialises (RegionToken.drain).
 */
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import pkcs11js from 'pkcs11js';
import { input } from './input.js';

/** Byte fields travel as standalone Uint8Arrays: a pooled Buffer would clone its whole 8 KB slab. */
interface SignJob {
  id: number;
  /** RegionToken connection generation: a new one means the library was re-initialised. */
  generation: number;
  slot: Uint8Array;
  key: Uint8Array;
  mechanism: pkcs11js.Mechanism;
  data: Uint8Array;
}
type SignReply = { id: number; signature: Uint8Array } | { id: number; error: { code: number; method: string; message: string } };

const own = (b: Buffer): Uint8Array => new Uint8Array(b);
const asBuffer = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

/** A worker posts its replies at least this often while it works through a batch of jobs. */
const REPLY_EVERY_MS = 1;
const SESSION_FLAGS = pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION;
const SESSION_GONE = new Set([0xb0 /* CKR_SESSION_CLOSED */, 0xb3 /* CKR_SESSION_HANDLE_INVALID */]);

function runWorker(modulePath: string): void {
  const p11 = new pkcs11js.PKCS11();
  p11.load(modulePath);
  let session: { handle: pkcs11js.Handle; generation: number } | undefined;
  const open = (job: SignJob) => {
    if (session?.generation === job.generation) return session.handle;
    session = { handle: p11.C_OpenSession(asBuffer(job.slot), SESSION_FLAGS), generation: job.generation };
    return session.handle;
  };
  const sign = (job: SignJob) => {
    const s = open(job);
    p11.C_SignInit(s, job.mechanism, asBuffer(job.key));
    return p11.C_Sign(s, input(asBuffer(job.data)), Buffer.allocUnsafe(1024));
  };
  // Replies go back together, at least every REPLY_EVERY_MS of signing: each postMessage costs
  // both threads ~10 µs and wakes the main thread once (measured: 20 → 10 µs of main-thread CPU
  // per ECDSA signature), while a long batch still answers its first jobs early.
  parentPort!.on('message', (jobs: SignJob[]) => {
    let replies: SignReply[] = [];
    let since = 0;
    for (const job of jobs) {
      if (!replies.length) since = performance.now();
      replies.push(run(job));
      if (performance.now() - since >= REPLY_EVERY_MS) {
        parentPort!.postMessage(replies);
        replies = [];
      }
    }
    if (replies.length) parentPort!.postMessage(replies);
  });
  const run = (job: SignJob): SignReply => {
    let reply: SignReply;
    try {
      let signature: Buffer;
      try {
        signature = sign(job);
      } catch (e) {
        // A failed call may leave the operation active, or the session may be gone: start afresh once.
        session = undefined;
        if (!(e instanceof pkcs11js.Pkcs11Error && SESSION_GONE.has(e.code))) throw e;
        signature = sign(job);
      }
      reply = { id: job.id, signature: own(signature) };
    } catch (e) {
      const err = e as pkcs11js.Pkcs11Error;
      reply = { id: job.id, error: { code: typeof err.code === 'number' ? err.code : -1, method: err.method ?? 'C_Sign', message: String(err.message) } };
    }
    return reply;
  };
}

/** The main-thread side: a few signing threads, jobs spread by how many each has queued. */
export class SignerThreads {
  /** `outbox`: jobs of this event-loop turn, posted together (one postMessage costs ~30 µs of main thread). */
  private readonly workers: { worker: Worker; queued: number; outbox: SignJob[] }[] = [];
  private flushScheduled = false;
  private readonly waiting = new Map<number, { resolve: (b: Buffer) => void; reject: (e: Error) => void; w: { queued: number } }>();
  private nextId = 1;
  private broken = false;

  constructor(modulePath: string, count: number) {
    for (let i = 0; i < count; i++) {
      const worker = new Worker(new URL(import.meta.url), { workerData: { kmsdSigner: modulePath } });
      const entry = { worker, queued: 0, outbox: [] as SignJob[] };
      worker.on('message', (replies: SignReply[]) => {
        for (const m of replies) {
          const w = this.waiting.get(m.id);
          if (!w) continue;
          this.waiting.delete(m.id);
          w.w.queued--;
          if ('signature' in m) w.resolve(asBuffer(m.signature));
          else w.reject(new pkcs11js.Pkcs11Error(m.error.message, m.error.code, m.error.method));
        }
      });
      worker.on('error', () => this.fail());
      worker.on('exit', () => this.fail());
      worker.unref();
      this.workers.push(entry);
    }
  }

  /** False once a thread died: callers fall back to the async path. */
  get usable(): boolean {
    return !this.broken;
  }

  /** Jobs posted and not answered yet. */
  get inFlight(): number {
    return this.waiting.size;
  }

  sign(generation: number, slot: Buffer, key: Buffer, mechanism: pkcs11js.Mechanism, data: Buffer): Promise<Buffer> {
    let entry = this.workers[0]!;
    for (const w of this.workers) if (w.queued < entry.queued) entry = w;
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject, w: entry });
      entry.queued++;
      entry.outbox.push({ id, generation, slot: own(slot), key: own(key), mechanism, data: own(data) });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.flushScheduled = false;
    for (const w of this.workers)
      if (w.outbox.length) {
        w.worker.postMessage(w.outbox);
        w.outbox = [];
      }
  }

  private fail(): void {
    if (this.broken) return;
    this.broken = true;
    for (const w of this.waiting.values()) w.reject(new Error('signing thread stopped'));
    this.waiting.clear();
  }

  /** Stops using the threads (callers take the async path from now on). */
  disable(): void {
    this.broken = true;
  }

  async close(): Promise<void> {
    this.broken = true;
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
  }
}

if (!isMainThread && (workerData as { kmsdSigner?: string })?.kmsdSigner) runWorker((workerData as { kmsdSigner: string }).kmsdSigner);
