import { monitorEventLoopDelay } from 'node:perf_hooks';
import client from 'prom-client';

/** Prometheus metrics of one process (each cluster worker exposes its own, labelled by pid). */
/** Latency buckets (seconds) of the XKS and AWS listeners: one request each, 0.5 ms to 1 s. */
const ADAPTER_LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

export class Metrics {
  readonly registry = new client.Registry();
  readonly httpRequests = new client.Counter({
    name: 'kmsd_http_requests_total',
    help: 'HTTP requests by route, method and status',
    labelNames: ['route', 'method', 'status'],
    registers: [this.registry],
  });
  readonly httpDuration = new client.Histogram({
    name: 'kmsd_http_request_duration_seconds',
    help: 'HTTP request latency by route',
    labelNames: ['route', 'method'],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
    registers: [this.registry],
  });
  readonly tokenOp = new client.Histogram({
    name: 'kmsd_token_operation_duration_seconds',
    help: 'PKCS#11 operation latency by region and operation',
    labelNames: ['region', 'op'],
    buckets: [0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025, 0.1, 0.5, 2],
    registers: [this.registry],
  });
  readonly rotations = new client.Counter({
    name: 'kmsd_rotations_total',
    help: 'Key versions created by rotation',
    labelNames: ['trigger'],
    registers: [this.registry],
  });
  readonly orphans = new client.Counter({
    name: 'kmsd_reconcile_orphan_objects_total',
    help: 'Token objects with a kmsd CKA_ID that SQLite does not know, by action taken',
    labelNames: ['region', 'action'],
    registers: [this.registry],
  });
  readonly auditBatch = new client.Histogram({
    name: 'kmsd_audit_commit_batch_size',
    help: 'Audit records per group commit',
    buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000],
    registers: [this.registry],
  });
  readonly auditCommit = new client.Histogram({
    name: 'kmsd_audit_commit_seconds',
    help: 'Time to durably commit one group of audit records',
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1],
    registers: [this.registry],
  });
  readonly storeQuery = new client.Histogram({
    name: 'kmsd_store_query_duration_seconds',
    help: 'Metadata store statement latency (SQLite or PostgreSQL)',
    buckets: [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2],
    registers: [this.registry],
  });
  readonly storeFailovers = new client.Counter({
    name: 'kmsd_store_failovers_total',
    help: 'Times the PostgreSQL store lost its primary and had to reconnect',
    registers: [this.registry],
  });
  readonly xksRequests = new client.Counter({
    name: 'kmsd_xks_requests_total',
    help: 'XKS proxy requests by operation and outcome',
    labelNames: ['operation', 'outcome'],
    registers: [this.registry],
  });
  readonly xksDuration = new client.Histogram({
    name: 'kmsd_xks_request_duration_seconds',
    help: 'XKS proxy latency by operation',
    labelNames: ['operation'],
    buckets: ADAPTER_LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly awsRequests = new client.Counter({
    name: 'kmsd_aws_requests_total',
    help: 'AWS KMS-compatible API requests by operation and outcome (error name or success)',
    labelNames: ['operation', 'outcome'],
    registers: [this.registry],
  });
  readonly awsDuration = new client.Histogram({
    name: 'kmsd_aws_request_duration_seconds',
    help: 'AWS KMS-compatible API latency by operation',
    labelNames: ['operation'],
    buckets: ADAPTER_LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly regionUp = new client.Gauge({
    name: 'kmsd_region_token_up',
    help: '1 when the region token is usable',
    labelNames: ['region'],
    registers: [this.registry],
  });

  readonly tokenIndexComplete = new client.Gauge({
    name: 'kmsd_token_index_complete',
    help: '1 when the region token object index holds every object; 0 while it is built in the background (requests for keys not indexed yet wait for it)',
    labelNames: ['region'],
    registers: [this.registry],
  });

  readonly workingCopies = new client.Gauge({
    name: 'kmsd_token_working_copies',
    help: 'Session working copies of secret keys held in the region token',
    labelNames: ['region'],
    registers: [this.registry],
  });

  /** Labelled children by label values, made once: no label hashing on the hot path. */
  private readonly children = new Map<string, { count: { inc(): void }; time: { observe(v: number): void } }>();

  private observe(key: string, make: () => { count: { inc(): void }; time: { observe(v: number): void } }, seconds: number): void {
    let c = this.children.get(key);
    if (!c) this.children.set(key, (c = make()));
    c.count.inc();
    c.time.observe(seconds);
  }

  /** One HTTP request: count by route, method and status; latency by route and method. */
  observeRequest(route: string, method: string, status: number, seconds: number): void {
    this.observe(`http ${method} ${route} ${status}`, () => ({ count: this.httpRequests.labels(route, method, String(status)), time: this.httpDuration.labels(route, method) }), seconds);
  }

  /** One XKS request: count by operation and outcome; latency by operation. */
  observeXks(operation: string, outcome: string, seconds: number): void {
    this.observe(`xks ${operation} ${outcome}`, () => ({ count: this.xksRequests.labels(operation, outcome), time: this.xksDuration.labels(operation) }), seconds);
  }

  /** One AWS KMS API request: count by operation and outcome; latency by operation. */
  observeAws(operation: string, outcome: string, seconds: number): void {
    this.observe(`aws ${operation} ${outcome}`, () => ({ count: this.awsRequests.labels(operation, outcome), time: this.awsDuration.labels(operation) }), seconds);
  }

  /** Max and p99 event-loop delay since the previous scrape: proves no HSM call blocks the loop. */
  private readonly loopDelay = monitorEventLoopDelay({ resolution: 10 });

  constructor() {
    this.registry.setDefaultLabels({ pid: String(process.pid) });
    client.collectDefaultMetrics({ register: this.registry });
    this.loopDelay.enable();
    const h = this.loopDelay;
    new client.Gauge({
      name: 'kmsd_event_loop_delay_max_seconds',
      help: 'Maximum event-loop delay since the previous scrape',
      registers: [this.registry],
      collect() {
        this.set(h.max / 1e9);
      },
    });
    new client.Gauge({
      name: 'kmsd_event_loop_delay_p99_seconds',
      help: '99th percentile event-loop delay since the previous scrape',
      registers: [this.registry],
      collect() {
        this.set(h.percentile(99) / 1e9);
        h.reset();
      },
    });
  }
}
