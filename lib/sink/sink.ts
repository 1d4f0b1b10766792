/**
 * What the flusher needs from the store rows are delivered to. The flusher
 * seals, paces and retries; a sink knows its server: how to pack rows into a
 * request body, how to send a batch, how to find out whether a batch whose
 * outcome was lost landed, and what a failure means.
 *
 * `lib/sink/clickhouse/` is the one implementation.
 *
 * @module
 */
import type { AnonymizerError, RequestOutcome } from "../errors.ts";
import type { BatchMeta, PackResult } from "../queue/kv_queue.ts";
import type { HttpLogRow } from "../record/types.ts";

/** Options the flusher passes to {@linkcode Sink.pack}. */
export interface PackHints {
  /**
   * Encoding whose last body the server could not read; a sink that has
   * another encoding the server reads uses that one. Default: none.
   */
  avoidEncoding?: string | undefined;
}

/** What a sink learned from its server's version. */
export interface SinkProfile {
  /** The version as the server printed it, trimmed. */
  version: string;
  /**
   * How an unknown outcome is resolved: `"check"` spends a slot on
   * {@linkcode Sink.check}; `"token"` resends the batch, which the server
   * drops if it stored it already.
   */
  dedup: "check" | "token";
  /** Whether the server reads a second body encoding to reseal an unread body in. */
  reencodes: boolean;
}

/** What {@linkcode Sink.check} found of a batch whose outcome is unknown. */
export interface CheckResult {
  /** Rows of the batch stored. */
  stored: number;
  /** Whether an INSERT of the batch is still running on the server. */
  running: boolean;
}

/** A failed request, as the flusher acts on it. */
export interface SinkFailure {
  /** What is known about whether the request was applied. */
  outcome: RequestOutcome;
  /**
   * Whether the proxy's rate limit refused it (a neighbour took the slot, or
   * the spacing is too short), rather than an outage.
   */
  rateLimited: boolean;
  /**
   * Whether the server could not read the body at all (corrupted, truncated,
   * a setting it rejects): no row is to blame.
   */
  bodyUnread: boolean;
  /** Whether a rejection may pass later unchanged (auth, schema, load); a row's data never does. */
  retriable: boolean;
  /** HTTP status, if a response came. */
  status?: number | undefined;
  /** The server's own error code, when it sent one. */
  serverCode?: number | undefined;
  /** The error itself, without payload, for logs and dead letters. */
  error: AnonymizerError;
}

/**
 * A store the flusher delivers sealed batches to. Every request method is
 * sent in a proxy slot the flusher already waited for, and fails with an
 * error {@linkcode Sink.classify} understands.
 */
export interface Sink {
  /** Where the sink writes, for logs. */
  readonly target: string;
  /** Asks the server its version; resolves to the text it printed. */
  probeVersion(signal: AbortSignal): Promise<string>;
  /**
   * Adopts `version`: every later pack and send follows its rules. Throws an
   * error naming the version when the sink cannot write to that release.
   */
  useVersion(version: string): SinkProfile;
  /**
   * Builds a batch body from a prefix of `rows`, with `batchId` in every row.
   * Only called after {@linkcode Sink.useVersion}.
   */
  pack(
    rows: HttpLogRow[],
    batchId: bigint,
    hints?: PackHints,
  ): PackResult | Promise<PackResult>;
  /** Sends the body of `batch`; resolving means stored. */
  send(batch: BatchMeta, body: Uint8Array, signal: AbortSignal): Promise<void>;
  /** Finds out whether `batch`, whose outcome is unknown, landed. */
  check(batch: BatchMeta, signal: AbortSignal): Promise<CheckResult>;
  /** Deletes the rows of `batch` a check found partly stored, so it can be resent. */
  repair(batch: BatchMeta, signal: AbortSignal): Promise<void>;
  /** The failure `error` stands for, or `null` for an error that is not the sink's (a bug). */
  classify(error: unknown): SinkFailure | null;
}
