/**
 * What the status snapshot needs that no other part keeps: the last
 * ClickHouse requests, refusals and dead letters since start, and an hour of
 * queued and landed row counts for the sparklines.
 *
 * @module
 */
import type { FlushEvent } from "./flusher.ts";
import type { FlushOutcome, StatusSample } from "./status.ts";

/** Options of {@linkcode StatusRecorder}. */
export interface StatusRecorderOptions {
  /** Minimum time between two history samples, ms. Default: `30_000`. */
  sampleMs?: number;
  /** How far back the history goes, ms. Default: `3_600_000` (one hour). */
  historyMs?: number;
  /** ClickHouse requests kept. Default: `10`. */
  flushes?: number;
  /** Clock, for tests. Default: `Date.now`. */
  now?: () => number;
}

/**
 * Keeps the recent history of one service for its status snapshot.
 *
 * @example
 * ```ts
 * import { StatusRecorder } from "./status_recorder.ts";
 * import assert from "node:assert/strict";
 *
 * let now = 0;
 * const recorder = new StatusRecorder({ sampleMs: 30_000, now: () => now });
 * recorder.onFlush({ kind: "insert", outcome: "refused", status: 503, durationMs: 3, nextSlotAt: 0 });
 * recorder.onDeadLetters({ too_old: 2 });
 * recorder.onDeadLetters({ too_old: 1, empty: 1 });
 * recorder.sample({ queuedRows: 10, landedRows: 0 });
 * now = 10_000;
 * recorder.sample({ queuedRows: 20, landedRows: 0 });
 * assert.equal(recorder.refusals, 1);
 * assert.deepEqual(recorder.deadLetters(), { too_old: 3, empty: 1 });
 * assert.deepEqual(recorder.samples(), [{ at: 0, queuedRows: 10, landedRows: 0 }]);
 * assert.equal(recorder.flushes()[0]?.status, 503);
 * ```
 */
export class StatusRecorder {
  readonly #sampleMs: number;
  readonly #historyMs: number;
  readonly #keepFlushes: number;
  readonly #now: () => number;
  #flushes: FlushOutcome[] = [];
  #samples: StatusSample[] = [];
  #deadLetters = new Map<string, number>();
  #refusals = 0;

  /** A recorder with an empty history. */
  constructor(options: StatusRecorderOptions = {}) {
    this.#sampleMs = options.sampleMs ?? 30_000;
    this.#historyMs = options.historyMs ?? 3_600_000;
    this.#keepFlushes = options.flushes ?? 10;
    this.#now = options.now ?? Date.now;
  }

  /** Time between two history samples, ms. */
  get sampleMs(): number {
    return this.#sampleMs;
  }

  /** ch-proxy refusals (503) since start. */
  get refusals(): number {
    return this.#refusals;
  }

  /** Records a ClickHouse request. */
  onFlush(e: FlushEvent): void {
    if (e.outcome === "refused" && e.status === 503) this.#refusals++;
    this.#flushes.push({
      at: this.#now(),
      kind: e.kind,
      outcome: e.outcome,
      status: e.status ?? null,
      rows: e.rows ?? null,
      durationMs: Math.round(e.durationMs),
      error: e.error ?? null,
    });
    if (this.#flushes.length > this.#keepFlushes) this.#flushes.shift();
  }

  /** Records dead letters, counted by error code. */
  onDeadLetters(codes: Record<string, number>): void {
    for (const [code, n] of Object.entries(codes)) {
      if (n > 0) this.#deadLetters.set(code, (this.#deadLetters.get(code) ?? 0) + n);
    }
  }

  /**
   * Adds a history sample unless the last one is less than `sampleMs` old,
   * and forgets those older than `historyMs`.
   */
  sample(counts: Omit<StatusSample, "at">): void {
    const at = this.#now();
    const last = this.#samples.at(-1);
    if (last !== undefined && at - last.at < this.#sampleMs) return;
    this.#samples.push({ at, ...counts });
    while (this.#samples[0] !== undefined && at - this.#samples[0].at > this.#historyMs) {
      this.#samples.shift();
    }
  }

  /** The last ClickHouse requests, newest last. */
  flushes(): FlushOutcome[] {
    return this.#flushes.map((f) => ({ ...f }));
  }

  /** Dead letters since start, by code. */
  deadLetters(): Record<string, number> {
    return Object.fromEntries(this.#deadLetters);
  }

  /** History samples, oldest first. */
  samples(): StatusSample[] {
    return this.#samples.map((s) => ({ ...s }));
  }
}
