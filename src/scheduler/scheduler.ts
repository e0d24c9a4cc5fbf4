import type { Agenda } from 'agenda';
import type { MongoClient } from 'mongodb';
import type { Logger } from 'winston';

export interface SchedulerJobs {
  /** One evaluation: scheduled rotation, destruction of keys past their window, reconciliation. */
  evaluate(): Promise<void>;
}


/**
 * Agenda 6 on MongoDB triggers the periodic evaluation. Agenda's lock is only a trigger (on
 * FerretDB findAndModify is not atomic, measured): exactly-once comes from the SQLite
 * compare-and-set in the services. MongoDB may be down at start or later; the daemon keeps
 * serving, readiness says "degraded", and the scheduler connects or resumes by itself.
 */
export class Scheduler {
  private client?: MongoClient;
  private agenda?: Agenda;
  private pingTimer?: NodeJS.Timeout;
  private connectTimer?: NodeJS.Timeout;
  private stopped = false;
  connected = false;

  /**
   * `installationId` names this data dir: daemons sharing it share one evaluation job, while
   * kmsd installations that happen to use the same MongoDB database never run each other's.
   */
  constructor(
    private readonly uri: string,
    private readonly installationId: string,
    private readonly intervalMs: number,
    private readonly jobs: SchedulerJobs,
    private readonly log: Logger,
  ) {}

  start(): void {
    void this.connect();
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    try {
      // Loaded here, not at module load: ~0.8 s of imports overlap the token scan at start-up.
      const { MongoClient } = await import('mongodb');
      const client = new MongoClient(this.uri, { serverSelectionTimeoutMS: 2000, connectTimeoutMS: 2000, heartbeatFrequencyMS: 2000 });
      await client.connect();
      await client.db().command({ ping: 1 });
      this.client = client;
      this.connected = true;
      await this.startAgenda(client);
      this.pingTimer = setInterval(() => void this.ping(), 1000);
      this.pingTimer.unref();
      this.log.info('scheduler connected to MongoDB', { intervalMs: this.intervalMs });
    } catch (e) {
      this.connected = false;
      this.log.warn('MongoDB unavailable; scheduled jobs paused, retrying', { error: (e as Error).message });
      await this.client?.close().catch(() => {});
      this.client = undefined;
      this.connectTimer = setTimeout(() => void this.connect(), 2000);
      this.connectTimer.unref();
    }
  }

  private async startAgenda(client: MongoClient): Promise<void> {
    const [{ Agenda }, { MongoBackend }] = await Promise.all([import('agenda'), import('@agendajs/mongo-backend')]);
    const agenda = new Agenda({
      backend: new MongoBackend({ mongo: client.db(), collection: 'kmsdJobs' }),
      // milliseconds as a number: a string like '200 milliseconds' is read as 200 s.
      processEvery: Math.min(Math.max(Math.floor(this.intervalMs / 2), 200), 5000),
      // A daemon killed while holding the lock must not stall evaluation for long; running the
      // (idempotent) evaluation twice is harmless, so a short lease is the safe side.
      defaultLockLifetime: Math.max(60_000, 3 * this.intervalMs),
      maxConcurrency: 4,
    });
    agenda.on('error', (e: Error) => {
      this.log.warn('agenda error', { error: e.message });
    });
    const job = `kms-evaluate:${this.installationId}`;
    agenda.define(job, async () => {
      await this.jobs.evaluate();
    });
    await agenda.start();
    await agenda.every(this.intervalMs, job);
    this.agenda = agenda;
  }

  private async ping(): Promise<void> {
    try {
      await this.client!.db().command({ ping: 1 }, { timeoutMS: 1500 });
      if (!this.connected) this.log.info('MongoDB is back; scheduled jobs resume');
      this.connected = true;
    } catch (e) {
      if (this.connected) this.log.warn('MongoDB connection lost; scheduled jobs paused', { error: (e as Error).message });
      this.connected = false;
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.pingTimer) clearInterval(this.pingTimer);
    if (this.connectTimer) clearTimeout(this.connectTimer);
    await this.agenda?.stop().catch(() => {});
    await this.client?.close().catch(() => {});
  }
}
