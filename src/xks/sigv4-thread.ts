/**
 * SigV4 verification on a thread of its own, for a process that does not run one kmsd per core.
 *
 * Why: a verification costs ~13 µs of CPU in a tight loop, 20–25 µs in the daemon (HMAC-SHA256, two SHA-256 digests, smithy's
 * canonicalisation), a fifth of an AWS Encrypt on the main thread, which is what limits one
 * process's throughput; the hand-over costs the main thread a few µs and the verification runs
 * on a core the process would otherwise leave idle. Where every core already runs a kmsd process
 * (`workers` ≥ cores) the hop buys no parallelism, so the daemon verifies on the event loop
 * there (the same split as the signing threads). A thread that dies leaves the verification to
 * the event loop; nothing is refused for it.
 */
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { SigV4Verifier, type ReceivedRequest, type SigV4Failure, type SigV4Options, type XksCredential } from './sigv4.js';

/** What verifies a request's signature: resolves to the access key id that signed it, or throws the configured error. */
export interface RequestVerifier {
  verify(req: ReceivedRequest): Promise<string>;
  close?(): Promise<void>;
}

interface Setup {
  kmsdSigV4: { credentials: XksCredential[]; region: string; service?: string };
}
interface Job {
  id: number;
  req: ReceivedRequest;
}
interface Answer {
  id: number;
  accessKeyId?: string;
  failure?: { kind: SigV4Failure; message: string };
}

/** The failure a verifier in the thread throws, carried back as its kind and message. */
class Refused extends Error {
  constructor(
    readonly kind: SigV4Failure,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Answers go back in small groups as they are ready, not after the whole message: the main
 * thread carries on with the first requests of a large turn while the thread still verifies the
 * rest (a turn of 50 requests is ~1 ms of verification), and a group is one message, not one each.
 */
const ANSWER_GROUP = 4;
/** Requests handed over in one message at most (the rest of a turn follows in later ones). */
const JOB_GROUP = 4;

function runThread(setup: Setup['kmsdSigV4']): void {
  const verifier = new SigV4Verifier(setup.credentials, setup.region, { service: setup.service, fail: (kind, message) => new Refused(kind, message) });
  parentPort!.on('message', async (jobs: Job[]) => {
    let answers: Answer[] = [];
    for (const job of jobs) {
      try {
        answers.push({ id: job.id, accessKeyId: await verifier.verify(job.req) });
      } catch (e) {
        answers.push({ id: job.id, failure: e instanceof Refused ? { kind: e.kind, message: e.message } : { kind: 'invalid', message: 'signature could not be verified' } });
      }
      if (answers.length === ANSWER_GROUP) {
        parentPort!.postMessage(answers);
        answers = [];
      }
    }
    if (answers.length > 0) parentPort!.postMessage(answers);
  });
}

/**
 * A SigV4Verifier whose work runs on one worker thread: the same verifier (same checks, same
 * messages), the error built on the main thread by the configured `fail`. Requests travel in
 * groups of up to JOB_GROUP (the rest of a turn at its end), answers in groups of ANSWER_GROUP.
 */
export class ThreadedSigV4Verifier implements RequestVerifier {
  private readonly inline: SigV4Verifier;
  private worker?: Worker;
  private nextId = 1;
  /** Requests handed to the thread and not answered yet (the request kept for the fallback when it dies). */
  private readonly waiting = new Map<number, { req: ReceivedRequest; resolve: (id: string) => void; reject: (e: Error) => void }>();
  private outbox: Job[] = [];
  private readonly failWith: (kind: SigV4Failure, message: string) => Error;

  constructor(credentials: XksCredential[], region: string, options: Omit<SigV4Options, 'nowMs'> & { fail: (kind: SigV4Failure, message: string) => Error }) {
    this.failWith = options.fail;
    this.inline = new SigV4Verifier(credentials, region, options);
    const worker = new Worker(new URL(import.meta.url), { workerData: { kmsdSigV4: { credentials, region, service: options.service } } satisfies Setup });
    worker.unref();
    worker.on('message', (answers: Answer[]) => {
      for (const a of answers) {
        const w = this.waiting.get(a.id);
        if (!w) continue;
        this.waiting.delete(a.id);
        if (a.failure) w.reject(this.failWith(a.failure.kind, a.failure.message));
        else w.resolve(a.accessKeyId!);
      }
    });
    const gone = () => {
      if (this.worker !== worker) return;
      this.worker = undefined;
      // What the thread had not answered is verified here instead.
      const pending = [...this.waiting.values()];
      this.waiting.clear();
      for (const w of pending) this.inline.verify(w.req).then(w.resolve, w.reject);
    };
    worker.on('error', gone);
    worker.on('exit', gone);
    this.worker = worker;
  }

  verify(req: ReceivedRequest): Promise<string> {
    if (!this.worker) return this.inline.verify(req);
    const id = this.nextId++;
    // Only what the verifier reads crosses to the thread (the headers object is a plain copy).
    const job: ReceivedRequest = { method: req.method, path: req.path, query: req.query, headers: { ...req.headers }, body: req.body };
    return new Promise<string>((resolve, reject) => {
      this.waiting.set(id, { req: job, resolve, reject });
      const queued = this.outbox.push({ id, req: job });
      // The thread starts on the first requests of a large turn while the rest are still parsed.
      if (queued === JOB_GROUP) this.post();
      else if (queued === 1) setImmediate(this.post);
    });
  }

  private readonly post = (): void => {
    const jobs = this.outbox;
    if (jobs.length === 0) return;
    this.outbox = [];
    if (this.worker) this.worker.postMessage(jobs);
  };

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    await w?.terminate();
  }
}

if (!isMainThread && (workerData as Partial<Setup>)?.kmsdSigV4) runThread((workerData as Setup).kmsdSigV4);
