/**
 * What the flusher does with a batch whose INSERT failed: keep it, split it,
 * reseal it, bisect it down to a poison row, or hold it as a systemic failure
 * once the breaker trips. The flusher's half of the README's outcome table.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { AnonymizerError } from "./errors.ts";
import type { BatchMeta, KvQueue } from "./queue/kv_queue.ts";
import type { HttpLogRow } from "./record/types.ts";
import type { SinkFailure } from "./sink/sink.ts";

const log = getLogger(["anonymizer", "flusher"]);

/** Where a poison row came from in Kafka. */
export interface PoisonSource {
  /** Topic. */
  topic: string;
  /** Partition. */
  partition: number;
  /** Offset. */
  offset: bigint;
}

/**
 * A failure of the whole stream rather than of one row: the flusher keeps the
 * batch and retries it each slot instead of dead-lettering rows.
 */
export interface SystemicFailure {
  /**
   * `"body_rejected"`: the server could not read the body (corrupted,
   * truncated, failed checksum or decompression, or a setting it rejects).
   * `"breaker"`: bisecting a rejected batch found rejected rows in more
   * separate groups than {@linkcode BISECTION_BREAKER_SHARE} of its rows.
   */
  cause: "body_rejected" | "breaker";
  /** The batch kept. */
  batchId: bigint;
  /** The server's error code, when it sent one. */
  serverCode?: number | undefined;
}

/**
 * Largest share of a rejected batch's rows that bisection may dead-letter:
 * 0.1%, and at least one row. One bad row costs one dead letter; rejected
 * rows in more separate groups than that point to a systemic cause (a schema
 * change, a server bug or setting) that an operator should fix rather than
 * lose the stream to the dead-letter topic. Halves are sent breadth first, so
 * the count of groups known to hold a rejected row grows before any single row
 * is reached: the breaker usually trips with nothing dead-lettered, after
 * 2 to 4 × the limit requests (37 when every row of a full 18,750-row batch
 * is rejected: its limit is 18 rows).
 *
 * @example
 * ```ts
 * import { BISECTION_BREAKER_SHARE } from "./flusher.ts";
 * import assert from "node:assert/strict";
 *
 * // A full 18,750-row batch may lose at most 18 rows to bisection.
 * assert.equal(Math.floor(18_750 * BISECTION_BREAKER_SHARE), 18);
 * ```
 */
export const BISECTION_BREAKER_SHARE = 0.001;

/** The bisection of one rejected batch, across the groups it was split into. */
interface Bisection {
  /** Rows of the batch first rejected. */
  rows: number;
  /** Ids of disjoint groups known to hold at least one rejected row. */
  suspects: Set<string>;
}

/** Callbacks of {@linkcode Rejections}. */
export interface RejectionHooks {
  /** Dead-letters a single rejected row; without it the row is kept and retried. */
  onPoisonRow?:
    | ((row: HttpLogRow, error: AnonymizerError, source: PoisonSource) => Promise<void>)
    | undefined;
  /** Reports a batch kept as a systemic failure. */
  onSystemicFailure?: ((failure: SystemicFailure) => void) | undefined;
}

/**
 * The flusher's state and rules for failed INSERTs. Bisections are kept in
 * memory only: after a restart the group being bisected counts as a new batch.
 */
export class Rejections {
  readonly #queue: KvQueue;
  readonly #hooks: RejectionHooks;
  /** Bisections under way, by the id of every group rejected so far. */
  #bisections = new Map<string, Bisection>();
  /** Encoding of the last body the server could not read; the next seal avoids it. */
  #avoidEncoding: string | undefined;

  /** Rules acting on `queue`. */
  constructor(queue: KvQueue, hooks: RejectionHooks) {
    this.#queue = queue;
    this.#hooks = hooks;
  }

  /** Encoding the next seal should avoid, if any. */
  get avoidEncoding(): string | undefined {
    return this.#avoidEncoding;
  }

  /** A batch that is not an isolated group was sealed: every bisection has ended. */
  sealedOrdinary(): void {
    this.#bisections.clear();
  }

  /**
   * Acts on the failed INSERT of `batch`, in state `prior` before the send.
   * `reencodes`: whether the sink reseals an unread body in another encoding.
   */
  async afterFailure(
    batch: BatchMeta,
    prior: BatchMeta["state"],
    failure: SinkFailure,
    reencodes: boolean,
  ): Promise<void> {
    const message = failure.error.message;
    switch (failure.outcome) {
      case "refused":
        await this.#queue.markState(batch.id, prior, message);
        return;
      case "unknown":
        await this.#queue.markState(batch.id, "unknown", message);
        return;
      case "too_large":
        if (prior !== "sealed") {
          log.warn(
            "ch-proxy refused batch {batchId} as too large after an attempt with an unknown " +
              "outcome; checking whether that attempt landed before splitting it",
            { batchId: String(batch.id), bytes: batch.bytes },
          );
          await this.#queue.markTooLarge(batch.id, message);
          return;
        }
        log.error(
          "ch-proxy refused batch {batchId} of {bytes} bytes as too large; re-splitting it. " +
            "Lower CLICKHOUSE_BODY_LIMIT to the proxy's client_max_body_size.",
          { batchId: String(batch.id), bytes: batch.bytes },
        );
        await this.#queue.unseal(batch.id, { groups: 2 });
        return;
      case "rejected":
        if (failure.bodyUnread) {
          await this.#keepUnreadBody(batch, prior, failure, reencodes && prior === "sealed");
          return;
        }
        if (failure.retriable || prior !== "sealed") {
          // Schema, auth or load trouble an operator can fix; the batch waits.
          await this.#queue.markState(batch.id, prior, message);
          return;
        }
        await this.#isolatePoison(batch, failure);
        return;
    }
  }

  /**
   * Keeps a batch whose body the server could not read: no row is to blame,
   * so nothing is bisected. With `reencode`, the rows are sealed again in
   * the other encoding for the next slot; that is safe only while no earlier
   * attempt has an unknown outcome, as resealing changes the batch id.
   */
  async #keepUnreadBody(
    batch: BatchMeta,
    prior: BatchMeta["state"],
    failure: SinkFailure,
    reencode: boolean,
  ): Promise<void> {
    log.error(
      "ClickHouse could not read the body of batch {batchId} ({encoding}, code {serverCode}): " +
        "the body or its transport is at fault, not a row, so nothing is dead-lettered; " +
        "{retry} at the next slot. Check the proxy and the server for corruption: {error}",
      {
        batchId: String(batch.id),
        encoding: batch.encoding,
        serverCode: failure.serverCode ?? "-",
        retry: reencode ? "resealing its rows in another encoding" : "resending it",
        error: failure.error.message,
      },
    );
    this.#hooks.onSystemicFailure?.({
      cause: "body_rejected",
      batchId: batch.id,
      serverCode: failure.serverCode,
    });
    if (!reencode) {
      await this.#queue.markState(batch.id, prior, failure.error.message);
      return;
    }
    this.#avoidEncoding = batch.encoding;
    const bisection = this.#bisectionOf(batch);
    if (bisection !== undefined) this.#bisections.set(String(batch.id), bisection);
    await this.#queue.unseal(batch.id, { groups: 1, isolate: batch.isolated !== false });
  }

  /** The bisection an isolated group belongs to, found by the id of the group it came from. */
  #bisectionOf(batch: BatchMeta): Bisection | undefined {
    if (batch.isolated === false) return undefined;
    return this.#bisections.get(batch.isolated.split(":")[0]!);
  }

  /**
   * Bisects a batch the server rejected as bad data: halves are sealed alone
   * until a single row is left, which is dead-lettered. Each step costs a slot,
   * so up front validation keeps this rare. The breaker holds the batch
   * instead once rejected rows sit in more separate groups than
   * {@linkcode BISECTION_BREAKER_SHARE} of the first batch's rows.
   */
  async #isolatePoison(batch: BatchMeta, failure: SinkFailure): Promise<void> {
    const message = failure.error.message;
    const parent = batch.isolated === false ? undefined : batch.isolated.split(":")[0]!;
    const bisection = this.#bisectionOf(batch) ?? { rows: batch.rows, suspects: new Set() };
    // The group replaces the one it came from: both hold the same rejected row.
    if (parent !== undefined) bisection.suspects.delete(parent);
    bisection.suspects.add(String(batch.id));
    this.#bisections.set(String(batch.id), bisection);
    const limit = Math.max(1, Math.floor(bisection.rows * BISECTION_BREAKER_SHARE));
    if (bisection.suspects.size > limit) {
      log.error(
        "Holding batch {batchId} ({rows} rows) as a systemic failure: ClickHouse rejected rows in " +
          "{groups} separate groups of a {batchRows}-row batch, more than the {limit} rows " +
          "bisection may dead-letter. Fix the cause (schema, server settings or version); " +
          "the batch is retried each slot: {error}",
        {
          batchId: String(batch.id),
          rows: batch.rows,
          groups: bisection.suspects.size,
          batchRows: bisection.rows,
          limit,
          error: message,
        },
      );
      this.#hooks.onSystemicFailure?.({
        cause: "breaker",
        batchId: batch.id,
        serverCode: failure.serverCode,
      });
      await this.#queue.markState(batch.id, "sealed", message);
      return;
    }
    if (batch.rows > 1) {
      log.warn("ClickHouse rejected batch {batchId} ({rows} rows); bisecting: {error}", {
        batchId: String(batch.id),
        rows: batch.rows,
        error: message,
      });
      await this.#queue.unseal(batch.id, { groups: 2, isolate: true });
      return;
    }
    const onPoisonRow = this.#hooks.onPoisonRow;
    if (onPoisonRow === undefined) {
      await this.#queue.markState(batch.id, "sealed", message);
      return;
    }
    const { rows, offsets, partitions } = await this.#queue.batchEntries(batch);
    await onPoisonRow(rows[0]!, failure.error, {
      topic: batch.topic,
      partition: partitions[0]!,
      offset: offsets[0]!,
    });
    await this.#queue.discard(batch.id);
    log.error("Dead-lettered one row ClickHouse rejected from batch {batchId}: {error}", {
      batchId: String(batch.id),
      error: message,
    });
  }
}

/** After a check found none of its rows stored, a batch is resent, or split if it was too large. */
export async function resendOrSplit(queue: KvQueue, batch: BatchMeta): Promise<void> {
  if (batch.tooLarge !== true) {
    await queue.markState(batch.id, "sealed");
    return;
  }
  log.error(
    "ch-proxy refused batch {batchId} of {bytes} bytes as too large, and none of its rows are " +
      "stored now; re-splitting it. Lower CLICKHOUSE_BODY_LIMIT to the proxy's " +
      "client_max_body_size.",
    { batchId: String(batch.id), bytes: batch.bytes },
  );
  await queue.unseal(batch.id, { groups: 2 });
}
