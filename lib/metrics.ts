/**
 * Prometheus metrics of the service, named by Prometheus conventions
 * (`anonymizer_` prefix, `_total` counters, base units). Labels carry only
 * bounded values: partitions, outcomes and error codes, never addresses.
 *
 * @module
 */
import { Counter, Gauge, Histogram, Registry } from "./_prometheus.ts";
import type { FlushEvent, Landing, SystemicFailure } from "./flusher.ts";
import type { KvQueue } from "./queue/kv_queue.ts";
import type { SourceBatchEvent } from "./source/kafka_source.ts";

/**
 * Live values of the flusher and the source, read at scrape time. They are
 * given with {@linkcode Metrics.watch} once both exist, since both report to
 * the metrics from the start.
 */
export interface MetricsSources {
  /** Seconds until the next allowed request. */
  nextRequestSeconds: () => number;
  /** Lag per partition. */
  lag: () => Record<number, number>;
  /** Whether consumption is paused by KV back-pressure. */
  backpressure: () => boolean;
  /** Requests ch-proxy refused in a row (FlusherStatus.refusalsInARow). Default: always 0. */
  refusalsInARow?: () => number;
}

/** What a scrape of `/metrics` needs: the text exposition and its content type. */
export interface MetricsSource {
  /** The content type of {@linkcode MetricsSource.metrics}. */
  readonly contentType: string;
  /** Collects every metric, then renders them in the Prometheus text format. */
  metrics(): Promise<string>;
}

/** The service's metrics. */
export interface Metrics {
  /** The registry to expose. */
  registry: MetricsSource;
  /**
   * Reads live values from `sources` from now on; until then the gauges they
   * feed read 0 (the lag gauge has no series).
   */
  watch(sources: MetricsSources): void;
  /** Records a Kafka batch. */
  onBatch(event: SourceBatchEvent): void;
  /** Records a ClickHouse request. */
  onFlush(event: FlushEvent): void;
  /** Records a batch confirmed stored. */
  onLanded(landing: Landing): void;
  /** Records rows dead-lettered after ClickHouse rejected them. */
  onPoisonRows(count: number): void;
  /** Records a batch kept as a systemic failure instead of being dead-lettered. */
  onSystemicFailure(failure: SystemicFailure): void;
}

/** Maps a request result to the `outcome` label: 2xx, 503, 413, 4xx, 5xx, timeout or unknown. */
function outcomeLabel(e: FlushEvent): string {
  if (e.outcome === "ok") return "2xx";
  if (e.outcome === "refused") return e.status === 503 ? "503" : "unknown";
  if (e.outcome === "too_large") return "413";
  if (e.status !== undefined) return e.status >= 500 ? "5xx" : "4xx";
  return e.code === "timeout" ? "timeout" : "unknown";
}

/**
 * Creates the metrics, reading the size and age of `queue` at scrape time, and
 * the flusher's and the source's live values once they are given to
 * {@linkcode Metrics.watch}.
 *
 * @example
 * ```ts
 * import { createMetrics } from "./metrics.ts";
 * import { openQueue } from "./queue/kv_queue.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * await using queue = await openQueue(`${dir}/q.sqlite3`);
 * const metrics = createMetrics(queue);
 * metrics.watch({
 *   nextRequestSeconds: () => 12,
 *   lag: () => ({ 0: 5 }),
 *   backpressure: () => false,
 * });
 * metrics.onBatch({
 *   partition: 0, received: 3, skipped: 0, queued: 2, deadLettered: 1,
 *   deadLetterCodes: { empty: 1 }, lag: 5,
 * });
 * const text = await metrics.registry.metrics();
 * assert.match(text, /anonymizer_records_consumed_total 3/);
 * assert.match(text, /anonymizer_records_dead_lettered_total\{reason="empty"\} 1/);
 * assert.match(text, /anonymizer_next_request_seconds 12/);
 * assert.match(text, /anonymizer_clickhouse_refusals_in_a_row 0/);
 *
 * // Errors are told apart by code, whatever their message says.
 * metrics.onFlush({
 *   kind: "insert", outcome: "unknown", durationMs: 30_000, nextSlotAt: 0,
 *   code: "timeout", error: "no answer",
 * });
 * assert.match(
 *   await metrics.registry.metrics(),
 *   /anonymizer_clickhouse_requests_total\{kind="insert",outcome="timeout"\} 1/,
 * );
 * ```
 */
export function createMetrics(queue: KvQueue): Metrics {
  let sources: MetricsSources | null = null;
  const registry = new Registry();
  const consumed = new Counter({
    name: "anonymizer_records_consumed_total",
    help: "Kafka messages handled (queued or dead-lettered), excluding redelivered duplicates",
    registry,
  });
  const skipped = new Counter({
    name: "anonymizer_records_redelivered_total",
    help:
      "Kafka messages skipped because they were already queued (redelivery after a crash or rebalance)",
    registry,
  });
  const queued = new Counter({
    name: "anonymizer_records_queued_total",
    help: "Rows appended to the KV queue",
    registry,
  });
  const flushed = new Counter({
    name: "anonymizer_records_flushed_total",
    help: "Rows confirmed stored in ClickHouse",
    registry,
  });
  const dead = new Counter({
    name: "anonymizer_records_dead_lettered_total",
    help: "Messages or rows sent to the dead-letter topic, by reason",
    labelNames: ["reason"],
    registry,
  });
  const requests = new Counter({
    name: "anonymizer_clickhouse_requests_total",
    help: "Requests to ClickHouse through ch-proxy, by kind and outcome",
    labelNames: ["kind", "outcome"],
    registry,
  });
  const refusals = new Counter({
    name: "anonymizer_clickhouse_refusals_total",
    help:
      "Requests ch-proxy refused (503 from nginx): another client on the IP, or spacing too short",
    registry,
  });
  new Gauge({
    name: "anonymizer_clickhouse_refusals_in_a_row",
    help: "Requests ch-proxy refused in a row; 0 after any other answer",
    registry,
    collect: (g) => {
      g.set(sources?.refusalsInARow?.() ?? 0);
    },
  });
  const systemic = new Counter({
    name: "anonymizer_clickhouse_systemic_failures_total",
    help:
      "Batches kept instead of dead-lettered, by cause: body_rejected (ClickHouse could not read the body) or breaker (rejected rows too spread to be bad data)",
    labelNames: ["cause"],
    registry,
  });
  const rowsPerRequest = new Histogram({
    name: "anonymizer_request_rows",
    help: "Rows per successful INSERT",
    buckets: [100, 1_000, 5_000, 10_000, 15_000, 18_000, 20_000, 25_000, 40_000],
    registry,
  });
  const bytesPerRequest = new Histogram({
    name: "anonymizer_request_body_bytes",
    help: "Body bytes per successful INSERT",
    buckets: [65_536, 262_144, 524_288, 786_432, 943_718, 1_017_119, 1_048_576],
    registry,
  });
  const latency = new Histogram({
    name: "anonymizer_delivery_latency_seconds",
    help: "Age of the oldest row of a batch when ClickHouse confirmed it",
    buckets: [5, 15, 30, 60, 65, 90, 120, 180, 300, 600, 1_800, 3_600],
    registry,
  });
  new Gauge({
    name: "anonymizer_next_request_seconds",
    help: "Seconds until ch-proxy allows the next request",
    registry,
    collect: (g) => {
      g.set(Math.max(0, sources?.nextRequestSeconds() ?? 0));
    },
  });
  new Gauge({
    name: "anonymizer_consumer_lag",
    help: "Messages between the last consumed offset and the high watermark, per partition",
    labelNames: ["partition"],
    registry,
    collect: (g) => {
      g.reset();
      for (const [p, lag] of Object.entries(sources?.lag() ?? {})) g.set(lag, { partition: p });
    },
  });
  new Gauge({
    name: "anonymizer_backpressure",
    help: "1 while consumption is paused because KV refuses writes (e.g. disk full)",
    registry,
    collect: (g) => {
      g.set(sources?.backpressure() ? 1 : 0);
    },
  });
  const queueRows = new Gauge({
    name: "anonymizer_queue_rows",
    help: "Rows waiting in the KV queue, including the sealed batch",
    registry,
  });
  const queueBytes = new Gauge({
    name: "anonymizer_queue_head_bytes",
    help:
      "Bytes of the oldest chunk per partition (a cheap sample; see anonymizer_kv_disk_bytes for size)",
    registry,
  });
  const oldest = new Gauge({
    name: "anonymizer_queue_oldest_age_seconds",
    help: "Age of the oldest queued row",
    registry,
  });
  const disk = new Gauge({
    name: "anonymizer_kv_disk_bytes",
    help: "Size on disk of the KV files (database and write-ahead log)",
    registry,
  });
  // One async collector refreshes every KV-derived gauge per scrape.
  new Gauge({
    name: "anonymizer_queue_landed_rows",
    help: "Rows this KV has ever seen confirmed stored (survives restarts)",
    registry,
    collect: async (g) => {
      const s = await queue.stats();
      queueRows.set(s.queuedRows + s.sealedRows);
      queueBytes.set(s.queuedBytes);
      oldest.set(s.oldestAgeMs / 1000);
      g.set(s.landedRows);
      let bytes = 0;
      for (const suffix of ["", "-wal", "-shm"]) {
        try {
          bytes += (await Deno.stat(queue.path + suffix)).size;
        } catch {
          // The WAL and SHM files exist only while SQLite needs them.
        }
      }
      disk.set(bytes);
    },
  });
  new Gauge({
    name: "anonymizer_process_resident_memory_bytes",
    help: "Resident set size",
    registry,
    collect: (g) => {
      g.set(Deno.memoryUsage().rss);
    },
  });
  new Counter({
    name: "anonymizer_process_cpu_seconds_total",
    help: "User and system CPU time spent",
    registry,
    total: () => {
      const u = process.cpuUsage();
      return (u.user + u.system) / 1e6;
    },
  });

  return {
    registry,
    watch(live) {
      sources = live;
    },
    onBatch(e) {
      consumed.inc({}, e.received - e.skipped);
      skipped.inc({}, e.skipped);
      queued.inc({}, e.queued);
      for (const [reason, n] of Object.entries(e.deadLetterCodes)) dead.inc({ reason }, n);
    },
    onFlush(e) {
      requests.inc({ kind: e.kind, outcome: outcomeLabel(e) });
      if (e.outcome === "refused" && e.status === 503) refusals.inc();
    },
    onLanded(l) {
      flushed.inc({}, l.rows);
      latency.observe(l.latencyMs / 1000);
      if (l.via === "insert") {
        rowsPerRequest.observe(l.rows);
        bytesPerRequest.observe(l.bytes);
      }
    },
    onPoisonRows(n) {
      dead.inc({ reason: "clickhouse_rejected" }, n);
    },
    onSystemicFailure(f) {
      systemic.inc({ cause: f.cause });
    },
  };
}
