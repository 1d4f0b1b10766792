/**
 * What the flusher tells about each request: the event for metrics, a
 * warning per failure, and one error diagnosing refusals in a row.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { ErrorCode, RequestOutcome } from "./errors.ts";
import type { BatchMeta } from "./queue/kv_queue.ts";
import type { SinkFailure } from "./sink/sink.ts";

const log = getLogger(["anonymizer", "flusher"]);

/**
 * Refusals in a row after which one error diagnoses them: one can be a
 * neighbour's request landing just before ours; three in a row are a pattern.
 */
const REFUSALS_BEFORE_DIAGNOSIS = 3;

/** What a request to the sink was for. */
export type RequestKind = "insert" | "check" | "version" | "repair";

/** One request's result, for logs and metrics. */
export interface FlushEvent {
  /** What the request was for. */
  kind: RequestKind;
  /** `"ok"`, or the failure's outcome: `"refused"`, `"too_large"`, `"rejected"`, `"unknown"`. */
  outcome: "ok" | RequestOutcome;
  /** HTTP status, if a response came. */
  status?: number | undefined;
  /** Batch id, for insert/check/repair. */
  batchId?: bigint | undefined;
  /** Rows in the batch. */
  rows?: number | undefined;
  /** Body bytes. */
  bytes?: number | undefined;
  /** Request duration, ms. */
  durationMs: number;
  /** Earliest time (ms) of the next request. */
  nextSlotAt: number;
  /** Error message without payload, when not ok. */
  error?: string | undefined;
  /** The failure's {@linkcode ErrorCode}, e.g. `"timeout"`, when not ok. */
  code?: ErrorCode | undefined;
}

/** A batch confirmed stored. */
export interface Landing {
  /** Batch id. */
  batchId: bigint;
  /** Rows stored. */
  rows: number;
  /** Body bytes. */
  bytes: number;
  /** Age of the batch's oldest row when confirmed, ms. */
  latencyMs: number;
  /** How it was confirmed. */
  via: "insert" | "check";
}

/** Callbacks of {@linkcode RequestReports}. */
export interface ReportHooks {
  /** Called after every request. */
  onEvent?: ((event: FlushEvent) => void) | undefined;
  /** Called when a batch is confirmed stored. */
  onLanded?: ((landing: Landing) => void) | undefined;
}

/** Keeps the last request's event and the count of refusals in a row. */
export class RequestReports {
  readonly #spacingMs: number;
  readonly #now: () => number;
  readonly #hooks: ReportHooks;
  /** Requests the proxy's rate limit refused in a row, 0 after any other answer. */
  refusalsInARow = 0;
  /** The last request's event. */
  last: FlushEvent | null = null;

  /** Reports naming `spacingMs` in the diagnosis, handing events and landings to `hooks`. */
  constructor(spacingMs: number, now: () => number, hooks: ReportHooks) {
    this.#spacingMs = spacingMs;
    this.#now = now;
    this.#hooks = hooks;
  }

  /** Reports a batch confirmed stored, by its INSERT (sent at `started`) or by a check. */
  landed(
    batch: BatchMeta,
    options: { started: number; via: Landing["via"]; nextSlotAt: number },
  ): void {
    const latencyMs = this.#now() - batch.oldestEnqueuedAt;
    const { via } = options;
    this.#hooks.onLanded?.({
      batchId: batch.id,
      rows: batch.rows,
      bytes: batch.bytes,
      latencyMs,
      via,
    });
    log.info(
      "Flushed batch {batchId}: {rows} rows, {bytes} bytes, outcome ok, next slot in {nextSlotS} s",
      {
        batchId: String(batch.id),
        rows: batch.rows,
        bytes: batch.bytes,
        outcome: "ok",
        durationMs: this.#now() - options.started,
        nextSlotS: Math.max(0, Math.round((options.nextSlotAt - this.#now()) / 1000)),
        latencyMs,
      },
    );
  }

  /** Reports one request, started at `started` (`performance.now()`). */
  record(
    kind: RequestKind,
    batch: Partial<BatchMeta>,
    started: number,
    failure: SinkFailure | null,
    nextSlotAt: number,
  ): void {
    this.#countRefusal(failure);
    const event: FlushEvent = {
      kind,
      outcome: failure === null ? "ok" : failure.outcome,
      status: failure === null ? 200 : failure.status,
      batchId: batch.id,
      rows: batch.rows,
      bytes: batch.bytes,
      durationMs: Math.round(performance.now() - started),
      nextSlotAt,
      error: failure?.error.message,
      code: failure?.error.code,
    };
    this.last = event;
    if (failure !== null) {
      log.warn(
        "Request {kind} for batch {batchId} failed ({outcome}); next slot in {nextSlotS} s: {error}",
        {
          kind,
          batchId: String(batch.id ?? "-"),
          outcome: failure.outcome,
          status: failure.status,
          nextSlotS: Math.max(0, Math.round((nextSlotAt - this.#now()) / 1000)),
          error: failure.error.message,
        },
      );
    }
    this.#hooks.onEvent?.(event);
  }

  /** At the third refusal in a row, logs the one error that says what an operator can do. */
  #countRefusal(failure: SinkFailure | null): void {
    if (failure?.rateLimited !== true) {
      this.refusalsInARow = 0;
      return;
    }
    this.refusalsInARow++;
    if (this.refusalsInARow !== REFUSALS_BEFORE_DIAGNOSIS) return;
    log.error(
      "ch-proxy refused {refusals} requests in a row: another client probably shares the " +
        "proxy's per-IP limit, or CLICKHOUSE_SPACING_MS={spacingMs} is shorter than the proxy's " +
        "spacing (stock ch-proxy: 62500). Give other clients another source IP, or raise " +
        "CLICKHOUSE_SPACING_MS to the proxy's rate",
      { refusals: this.refusalsInARow, spacingMs: this.#spacingMs },
    );
  }
}
