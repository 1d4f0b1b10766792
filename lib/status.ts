/**
 * The status snapshot a running instance serves at `/status.json`, and its
 * rendering as the short text table `anonymizer status` prints.
 *
 * @module
 */

/** One owned partition and how far its consumer is behind. */
export interface PartitionStatus {
  /** Partition number. */
  partition: number;
  /** Messages behind the high watermark as of the last fetched batch; `null` before the first. */
  lag: number | null;
}

/** The sealed batch, the one the flusher sends next or is sending. */
export interface SealedBatchStatus {
  /** Batch id (decimal; a 63-bit integer does not fit a JSON number). */
  id: string;
  /** Rows in the batch. */
  rows: number;
  /** Body bytes. */
  bytes: number;
  /** `"sealed"` (not sent yet), `"sending"` or `"unknown"` (a send whose outcome is not known yet). */
  state: string;
  /** INSERT attempts so far. */
  attempts: number;
  /** When it was sealed (ms since the epoch). */
  sealedAt: number;
  /** Last error of a send, without payload; `null` when none. */
  lastError: string | null;
}

/** One ClickHouse request. */
export interface FlushOutcome {
  /** When the answer came (ms since the epoch). */
  at: number;
  /** What the request was for: `"insert"`, `"check"`, `"version"` or `"repair"`. */
  kind: string;
  /** `"ok"`, `"refused"`, `"too_large"`, `"rejected"` or `"unknown"`. */
  outcome: string;
  /** HTTP status; `null` when no response came. */
  status: number | null;
  /** Rows of the batch; `null` for requests without one. */
  rows: number | null;
  /** Request duration, ms. */
  durationMs: number;
  /** Error without payload; `null` when ok. */
  error: string | null;
}

/** One point of the history the sparklines draw. */
export interface StatusSample {
  /** When it was taken (ms since the epoch). */
  at: number;
  /** Rows waiting in KV, the sealed batch included. */
  queuedRows: number;
  /** Rows this KV has ever seen confirmed stored. */
  landedRows: number;
}

/** Everything `anonymizer status` shows, as `/status.json` serves it. */
export interface StatusSnapshot {
  /** When it was taken (ms since the epoch). */
  at: number;
  /** Id of the instance (its KV queue). */
  instance: string;
  /** The Kafka side. */
  kafka: {
    /** Whether the consumer has joined its group. */
    joined: boolean;
    /** Whether consumption is paused because KV refuses writes. */
    backpressure: boolean;
    /** Partitions owned in the current generation. */
    partitions: PartitionStatus[];
  };
  /** The KV queue. */
  queue: {
    /** Rows waiting, the sealed batch included. */
    rows: number;
    /** Rows of those in the sealed batch. */
    sealedRows: number;
    /** Age of the oldest waiting row, ms; 0 when empty. */
    oldestAgeMs: number;
    /** Size of the KV files on disk (database and write-ahead log). */
    diskBytes: number;
    /** Rows this KV has ever seen confirmed stored. */
    landedRows: number;
    /** Batches this KV has ever seen confirmed stored. */
    landedBatches: number;
  };
  /** The sealed batch; `null` when none. */
  batch: SealedBatchStatus | null;
  /** Pacing of requests through ch-proxy. */
  pacing: {
    /** Earliest time of the next request (ms since the epoch). */
    nextSlotAt: number;
    /** Whether a request is on the wire. */
    inflight: boolean;
  };
  /** The last ClickHouse requests, newest last. */
  flushes: FlushOutcome[];
  /** ch-proxy refusals (503). */
  refusals: {
    /** Since the process started. */
    total: number;
    /** In a row, 0 after any other answer. */
    inARow: number;
  };
  /** Dead letters since the process started, by error code. */
  deadLetters: Record<string, number>;
  /** The ClickHouse server behind ch-proxy. */
  clickhouse: {
    /** Server version, `null` until the first answer. */
    version: string | null;
    /** How an unknown outcome is resolved: `"token"` or `"check"`; `null` until the version is known. */
    dedup: string | null;
    /** The `CLICKHOUSE_DEDUP` setting it derives from. */
    dedupSetting: string;
  };
  /** Queued and landed rows over the last hour. */
  history: {
    /** Time between two samples, ms. */
    sampleMs: number;
    /** Samples, oldest first; the last one is taken with the snapshot. */
    samples: StatusSample[];
  };
}

/** Options of {@linkcode renderStatus}. */
export interface RenderStatusOptions {
  /** Flush outcomes shown, newest last. Default: 5. */
  flushes?: number;
}

const LABEL_WIDTH = 14;

/**
 * Renders `snapshot` as a short table, one item per line, for a terminal.
 * Times are relative to `snapshot.at`, so the table reads the same whenever
 * it is printed.
 *
 * @example
 * ```ts
 * import { renderStatus, type StatusSnapshot } from "./status.ts";
 * import assert from "node:assert/strict";
 *
 * const snapshot: StatusSnapshot = {
 *   at: 1_000_000,
 *   instance: "a1",
 *   kafka: { joined: true, backpressure: false, partitions: [{ partition: 0, lag: 7 }] },
 *   queue: {
 *     rows: 120, sealedRows: 100, oldestAgeMs: 4_500, diskBytes: 3 * 1_048_576,
 *     landedRows: 900, landedBatches: 9,
 *   },
 *   batch: {
 *     id: "42", rows: 100, bytes: 12_000, state: "sealed", attempts: 0,
 *     sealedAt: 999_000, lastError: null,
 *   },
 *   pacing: { nextSlotAt: 1_012_000, inflight: false },
 *   flushes: [],
 *   refusals: { total: 2, inARow: 0 },
 *   deadLetters: { too_old: 3 },
 *   clickhouse: { version: "18.16.1", dedup: "check", dedupSetting: "auto" },
 *   history: { sampleMs: 30_000, samples: [] },
 * };
 * const text = renderStatus(snapshot);
 * assert.match(text, /^Partitions +0 \(lag 7\)$/m);
 * assert.match(text, /^Next slot +in 12\.0 s$/m);
 * assert.match(text, /^Dead letters +too_old 3/m);
 * assert.match(text, /^ClickHouse +18\.16\.1, dedup check \(CLICKHOUSE_DEDUP=auto\)$/m);
 * ```
 */
export function renderStatus(snapshot: StatusSnapshot, options: RenderStatusOptions = {}): string {
  const s = snapshot;
  const rows: [string, string][] = [];
  const add = (label: string, value: string) => rows.push([label, value]);
  add("Instance", `${s.instance} at ${new Date(s.at).toISOString()}`);
  add(
    "Kafka",
    `${s.kafka.joined ? "joined" : "not joined"}${
      s.kafka.backpressure ? ", paused: KV refuses writes" : ""
    }`,
  );
  const lags = s.kafka.partitions.map((p) => p.lag).filter((l): l is number => l !== null);
  add(
    "Partitions",
    s.kafka.partitions.length === 0
      ? "none owned"
      : s.kafka.partitions.map((p) => `${p.partition} (lag ${p.lag ?? "n/a"})`).join(", "),
  );
  add("Consumer lag", lags.length === 0 ? "n/a" : `${sum(lags)} messages in total`);
  add(
    "Queued",
    `${s.queue.rows} rows (${s.queue.sealedRows} sealed), oldest ${seconds(s.queue.oldestAgeMs)}`,
  );
  add("KV on disk", bytes(s.queue.diskBytes));
  add(
    "Sealed batch",
    s.batch === null ? "none" : `${s.batch.id}: ${s.batch.rows} rows, ${bytes(s.batch.bytes)}, ` +
      `${s.batch.state}, ${s.batch.attempts} attempts, sealed ${
        seconds(s.at - s.batch.sealedAt)
      } ago${s.batch.lastError === null ? "" : `, last error: ${s.batch.lastError}`}`,
  );
  const wait = s.pacing.nextSlotAt - s.at;
  add(
    "Next slot",
    // Rounded up: a slot 40 ms away is not "in 0.0 s".
    `${wait > 0 ? `in ${seconds(Math.ceil(wait / 100) * 100)}` : "now"}${
      s.pacing.inflight ? ", a request in flight" : ""
    }`,
  );
  const shown = s.flushes.slice(-(options.flushes ?? 5));
  if (shown.length === 0) add("Last flushes", "none yet");
  shown.forEach((f, i) => add(i === 0 ? "Last flushes" : "", flushLine(f, s.at)));
  add("Refusals", `${s.refusals.total} since start, ${s.refusals.inARow} in a row`);
  const codes = Object.entries(s.deadLetters).sort(([a], [b]) => a.localeCompare(b));
  add(
    "Dead letters",
    codes.length === 0
      ? "none since start"
      : `${codes.map(([code, n]) => `${code} ${n}`).join(", ")} (since start)`,
  );
  add(
    "ClickHouse",
    `${s.clickhouse.version ?? "version not known yet"}, dedup ${s.clickhouse.dedup ?? "n/a"} ` +
      `(CLICKHOUSE_DEDUP=${s.clickhouse.dedupSetting})`,
  );
  add("Landed", `${s.queue.landedRows} rows in ${s.queue.landedBatches} batches by this KV`);
  return rows.map(([label, value]) => `${label.padEnd(LABEL_WIDTH)}${value}`).join("\n");
}

function flushLine(f: FlushOutcome, now: number): string {
  const what = f.outcome === "ok" ? "ok" : `${f.outcome}${f.status === null ? "" : ` ${f.status}`}`;
  return `${seconds(now - f.at)} ago: ${f.kind} ${what}` +
    `${f.rows === null ? "" : `, ${f.rows} rows`}, ${f.durationMs} ms` +
    `${f.error === null ? "" : `: ${f.error}`}`;
}

function sum(values: number[]): number {
  return values.reduce((a, b) => a + b, 0);
}

function seconds(ms: number): string {
  return `${(Math.max(0, ms) / 1000).toFixed(1)} s`;
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1_048_576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1_048_576).toFixed(1)} MiB`;
}
