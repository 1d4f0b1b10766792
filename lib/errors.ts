/**
 * Error classes shared by every stage of anonymizer.
 *
 * Every error carries a machine-readable `code` and a `retriable` flag so the
 * caller can decide between retrying, dead-lettering and exiting without
 * parsing messages.
 *
 * @module
 */
import { shownValue } from "./redact.ts";

/**
 * Every machine-readable reason an anonymizer error or a rejected record
 * carries: a closed set, so metrics labels and dead-letter headers stay
 * bounded and a caller can switch on them.
 *
 * @example
 * ```ts
 * import type { ErrorCode } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * const code: ErrorCode = "proxy_refused";
 * assert.equal(code, "proxy_refused");
 * ```
 */
export type ErrorCode =
  // Settings and start-up.
  | "config_invalid"
  | "invalid_option"
  | "startup_failed"
  // Kafka messages that cannot be decoded (dead-lettered).
  | "empty"
  | "truncated"
  | "not_capnp"
  | "invalid_utf8"
  | "trailing_bytes"
  | "decode_failed"
  | "no_decoder"
  // Records that cannot be stored truthfully (dead-lettered).
  | "timestamp_zero"
  | "timestamp_out_of_range"
  | "timestamp_future"
  | "timestamp_too_old"
  | "status_out_of_range"
  | "resource_id_out_of_range"
  | "bytes_sent_out_of_range"
  | "request_time_out_of_range"
  // Rows ClickHouse rejected (dead-lettered after bisection).
  | "clickhouse_rejected"
  // The KV queue.
  | "disk_full"
  | "kv_conflict"
  | "kv_locked"
  | "kv_open_failed"
  | "kv_write_failed"
  | "batch_corrupt"
  | "batch_missing"
  | "ids_exhausted"
  | "too_many_pending"
  | "row_too_large"
  | "queue_format_unknown"
  | "kv_key_invalid"
  // Requests to ClickHouse through ch-proxy.
  | "proxy_refused"
  | "proxy_error"
  | "proxy_unreachable"
  | "upstream_unavailable"
  | "too_large"
  | "body_too_large"
  | "body_rejected"
  | "server_rejected"
  | "server_refused"
  | "server_failed"
  | "server_answer_invalid"
  | "server_version_unsupported"
  | "server_version_unknown"
  | "timeout"
  | "connection_lost"
  | "sql_failed"
  | "pack_invalid"
  // Dead-letter replay: a letter that stays in the dead-letter topic.
  | "dead_letter_kept"
  // anonymizer status, asking a running instance.
  | "status_unreachable"
  | "status_unavailable"
  // The load generator, demo and dashboard queries (tools/).
  | "kafka_connect"
  | "kafka_send"
  | "encode_invalid"
  | "query_name_invalid"
  | "param_missing"
  // Test and bench helpers (testing/, tests/, bench/).
  | "test_failed"
  | "test_config_invalid"
  | "test_name_invalid"
  | "test_topic_exists"
  | "test_kafka_failed"
  | "test_kafka_evict"
  | "test_clickhouse_failed"
  | "test_clickhouse_unreachable"
  | "test_clickhouse_closed"
  | "test_clickhouse_port_taken"
  | "test_proxy_failed"
  | "test_proxy_port_taken"
  | "test_fault_proxy_failed"
  | "bench_server_failed"
  | "results_invalid";

/** Options accepted by every anonymizer error constructor. */
export interface AnonymizerErrorOptions {
  /** Machine-readable reason, e.g. `"config_invalid"`. */
  code: ErrorCode;
  /** Whether repeating the same operation later may succeed. Default: `false`. */
  retriable?: boolean;
  /** The underlying error, if any. Default: `undefined`. */
  cause?: unknown;
}

/**
 * Base class of all anonymizer errors.
 *
 * @example Inspect code and retriable flag
 * ```ts
 * import { AnonymizerError } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * const err = new AnonymizerError("Cannot flush as the proxy refused: status 503", {
 *   code: "proxy_refused",
 *   retriable: true,
 * });
 * assert.equal(err.name, "AnonymizerError");
 * assert.equal(err.retriable, true);
 * ```
 */
export class AnonymizerError extends Error {
  /** Machine-readable reason. */
  readonly code: ErrorCode;
  /** Whether repeating the same operation later may succeed. */
  readonly retriable: boolean;

  /** Builds an error; `message` says what failed and the value involved. */
  constructor(message: string, options: AnonymizerErrorOptions) {
    super(message, { cause: options.cause });
    this.name = "AnonymizerError";
    this.code = options.code;
    this.retriable = options.retriable ?? false;
  }
}

/**
 * A setting has a value anonymizer cannot start with. Never retriable. The
 * value is shown with any URL userinfo replaced by `***`, and a secret
 * setting's value not at all.
 *
 * @example
 * ```ts
 * import { ConfigError } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * const err = new ConfigError("KAFKA_BROKERS", "x", "must be host:port");
 * assert.equal(
 *   err.message,
 *   'Cannot start as KAFKA_BROKERS must be host:port: current value is "x"',
 * );
 * assert.equal(err.setting, "KAFKA_BROKERS");
 * assert.equal(
 *   new ConfigError("CLICKHOUSE_URL", "http://u:pw@h:1", "must not contain credentials").message,
 *   'Cannot start as CLICKHOUSE_URL must not contain credentials: current value is "http://***@h:1"',
 * );
 * ```
 */
export class ConfigError extends AnonymizerError {
  /** The environment variable name of the offending setting. */
  readonly setting: string;

  /**
   * Builds the one-line error for `setting` holding `value`. `options.secret`
   * (default: `false`) hides the value entirely.
   */
  constructor(
    setting: string,
    value: string,
    rule: string,
    options: { cause?: unknown; secret?: boolean } = {},
  ) {
    const shown = JSON.stringify(shownValue(value, { secret: options.secret ?? false }));
    super(`Cannot start as ${setting} ${rule}: current value is ${shown}`, {
      code: "config_invalid",
      retriable: false,
      cause: options.cause,
    });
    this.name = "ConfigError";
    this.setting = setting;
  }
}

/**
 * A Kafka message could not be decoded or failed validation. Never retriable:
 * the same bytes fail the same way, so the message is dead-lettered.
 *
 * @example
 * ```ts
 * import { DecodeError } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * const err = new DecodeError("Cannot decode message as it is empty: length is 0", {
 *   code: "empty",
 * });
 * assert.equal(err.name, "DecodeError");
 * assert.equal(err.retriable, false);
 * ```
 */
export class DecodeError extends AnonymizerError {
  /** Builds a decode error; `options.code` names the kind of bad input. */
  constructor(message: string, options: { code: ErrorCode; cause?: unknown }) {
    super(message, { code: options.code, retriable: false, cause: options.cause });
    this.name = "DecodeError";
  }
}

/**
 * What is known about a request to ClickHouse that did not succeed.
 *
 * - `refused`: ch-proxy refused it (503 from nginx); ClickHouse never saw it.
 * - `too_large`: ch-proxy refused the body size (413); ClickHouse never saw it.
 * - `rejected`: ClickHouse answered with an error before writing anything.
 * - `unknown`: the request may or may not have been applied (timeout, reset
 *   connection, 502/504, or a ClickHouse error raised while writing).
 */
export type RequestOutcome = "refused" | "too_large" | "rejected" | "unknown";

/**
 * A request to ClickHouse (through ch-proxy) failed.
 *
 * @example
 * ```ts
 * import { ClickHouseError } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * const err = new ClickHouseError("Cannot insert batch 7 as ch-proxy refused it: status 503", {
 *   code: "proxy_refused",
 *   outcome: "refused",
 *   status: 503,
 *   retriable: true,
 * });
 * assert.equal(err.outcome, "refused");
 * assert.equal(err.status, 503);
 * ```
 */
export class ClickHouseError extends AnonymizerError {
  /** What is known about whether the request was applied. */
  readonly outcome: RequestOutcome;
  /** HTTP status, or `undefined` when no response arrived. */
  readonly status: number | undefined;
  /** ClickHouse exception code (e.g. 27 for a parse error), when the server sent one. */
  readonly serverCode: number | undefined;

  /** Builds the error; `message` names the request and the status or cause. */
  constructor(
    message: string,
    options: {
      code: ErrorCode;
      outcome: RequestOutcome;
      retriable: boolean;
      status?: number;
      serverCode?: number;
      cause?: unknown;
    },
  ) {
    super(message, options);
    this.name = "ClickHouseError";
    this.outcome = options.outcome;
    this.status = options.status;
    this.serverCode = options.serverCode;
  }
}

/**
 * The durable queue in Deno KV could not be read or written (e.g. disk full,
 * or a lost race with another writer). Retriable unless `code` says otherwise.
 *
 * @example
 * ```ts
 * import { QueueError } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * const err = new QueueError("Cannot append to queue as the disk is full: path /var/lib/kv", {
 *   code: "disk_full",
 *   retriable: true,
 * });
 * assert.equal(err.name, "QueueError");
 * ```
 */
export class QueueError extends AnonymizerError {
  /** Builds the error; `message` names the operation and the KV path or key. */
  constructor(message: string, options: AnonymizerErrorOptions) {
    super(message, options);
    this.name = "QueueError";
  }
}

/**
 * A start-up step failed in a way retrying cannot fix, e.g. Kafka refused to
 * create the dead-letter topic. Never retriable; `setting` names the setting
 * an operator should look at.
 *
 * @example
 * ```ts
 * import { StartupError } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * const err = new StartupError(
 *   "KAFKA_DLQ_TOPIC",
 *   'Cannot start as KAFKA_DLQ_TOPIC "x" cannot be created: not authorized',
 * );
 * assert.equal(err.setting, "KAFKA_DLQ_TOPIC");
 * assert.equal(err.retriable, false);
 * ```
 */
export class StartupError extends AnonymizerError {
  /** The environment variable name of the setting involved. */
  readonly setting: string;

  /** Builds the error; `message` names `setting` and says what failed. */
  constructor(setting: string, message: string, options: { cause?: unknown } = {}) {
    super(message, { code: "startup_failed", retriable: false, cause: options.cause });
    this.name = "StartupError";
    this.setting = setting;
  }
}
