/**
 * The ClickHouse sink: Native + zstd bodies, the INSERT with the settings
 * exactly-once rests on, and how an unknown outcome is resolved on each
 * release (a check SELECT and repair, or a resend with a deduplication token).
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { AnonymizerError, ClickHouseError } from "../../errors.ts";
import type { BatchMeta, PackResult } from "../../queue/kv_queue.ts";
import type { HttpLogRow } from "../../record/types.ts";
import type { CheckResult, PackHints, Sink, SinkFailure, SinkProfile } from "../sink.ts";
import type { ClickHouseClient } from "./clickhouse_client.ts";
import { packBatch, readableEncoding, type WireEncoding } from "./pack_batch.ts";
import { type ServerProfile, serverProfile } from "./server_version.ts";
import { insertSettings } from "./_insert_settings.ts";

const log = getLogger(["anonymizer", "flusher"]);

/** Options of {@linkcode ClickHouseSink}. */
export interface ClickHouseSinkOptions {
  /** Database holding `http_log`. Default: `"default"`. */
  database?: string;
  /** Largest request body, bytes. Default: `1_048_576`. */
  bodyLimit?: number;
  /**
   * Body encoding: `"auto"` picks one by server version, and the other one
   * after the server could not read a body. Default: `"auto"`.
   */
  encoding?: "auto" | WireEncoding;
  /**
   * How an unknown outcome is resolved: `"check"` spends a slot on one
   * SELECT by batch id; `"token"` resends with `insert_deduplication_token`
   * (needs the deduplication windows migrate creates on 23.3+); `"auto"`
   * picks `"token"` on 23.3 and later. Before 23.3 it is always `"check"`.
   * Default: `"auto"`.
   */
  dedup?: "auto" | "check" | "token";
}

/**
 * Writes batches to ClickHouse's `http_log` through `client` (pointed at
 * ch-proxy).
 *
 * @example What the sink does on each release
 * ```ts
 * import { ClickHouseSink } from "./clickhouse_sink.ts";
 * import { ClickHouseClient } from "./clickhouse_client.ts";
 * import assert from "node:assert/strict";
 *
 * const sink = new ClickHouseSink(new ClickHouseClient("http://127.0.0.1:8124"));
 * assert.deepEqual(sink.useVersion("18.16.1"), {
 *   version: "18.16.1",
 *   dedup: "check",
 *   reencodes: false,
 * });
 * assert.equal(sink.useVersion("26.9.2.1").dedup, "token");
 * assert.equal(sink.classify(new Error("a bug")), null);
 * ```
 */
export class ClickHouseSink implements Sink {
  readonly #client: ClickHouseClient;
  readonly #database: string;
  readonly #bodyLimit: number;
  readonly #encoding: "auto" | WireEncoding;
  readonly #dedup: "auto" | "check" | "token";
  #server: ServerProfile | null = null;

  /** A sink sending through `client`. */
  constructor(client: ClickHouseClient, options: ClickHouseSinkOptions = {}) {
    this.#client = client;
    this.#database = options.database ?? "default";
    this.#bodyLimit = options.bodyLimit ?? 1_048_576;
    this.#encoding = options.encoding ?? "auto";
    this.#dedup = options.dedup ?? "auto";
  }

  /** The ClickHouse (or ch-proxy) endpoint. */
  get target(): string {
    return this.#client.url;
  }

  /** Asks the server its version. */
  async probeVersion(signal: AbortSignal): Promise<string> {
    // The format is named: a server's default output format is its own setting.
    return await this.#client.query("SELECT version() FORMAT TabSeparated", {
      signal,
      what: "version check",
    });
  }

  /** Adopts `version`; throws `UnsupportedServerError` for a release it cannot write to. */
  useVersion(version: string): SinkProfile {
    this.#server = null;
    // A release it does not know leaves the sink without one: nothing is sent by a wrong rule.
    const server = serverProfile(version);
    this.#server = server;
    if (this.#dedup === "token" && !server.modern) {
      log.error(
        "CLICKHOUSE_DEDUP=token needs ClickHouse 23.3 or later, but the server is {version}; " +
          "unknown outcomes are resolved with a check instead",
        { version: server.version },
      );
    }
    return {
      version: server.version,
      dedup: this.#strategy(server),
      reencodes: server.modern,
    };
  }

  /** Packs a Native + zstd body of at most the body limit. */
  pack(rows: HttpLogRow[], batchId: bigint, hints: PackHints = {}): PackResult {
    const serverVersion = this.#profile().version;
    return packBatch(rows, {
      batchId,
      serverVersion,
      bodyLimit: this.#bodyLimit,
      database: this.#database,
      encoding: this.#encoding === "auto"
        ? readableEncoding(serverVersion, hints.avoidEncoding)
        : this.#encoding,
    });
  }

  /** Sends the INSERT of `batch` with the settings of the server's release. */
  async send(batch: BatchMeta, body: Uint8Array, signal: AbortSignal): Promise<void> {
    const { query: sql, ...params } = batch.query;
    // Lets a later check see whether ClickHouse is still running this INSERT.
    params.query_id = `anonymizer-batch-${batch.id}-${batch.attempts}`;
    const server = this.#profile();
    Object.assign(
      params,
      insertSettings(server, { dedup: this.#strategy(server), batchId: batch.id }),
    );
    await this.#client.query(sql!, {
      body,
      params,
      headers: batch.headers,
      signal,
      what: `INSERT of batch ${batch.id}`,
    });
  }

  /**
   * Counts the rows of `batch` stored, and its INSERTs still running, in one
   * request: a check that raced a slow INSERT would otherwise see 0 and resend.
   */
  async check(batch: BatchMeta, signal: AbortSignal): Promise<CheckResult> {
    const db = this.#database;
    const sql =
      `SELECT (SELECT count() FROM ${db}.http_log WHERE timestamp >= toDateTime(${batch.minTimestamp}) ` +
      `AND timestamp <= toDateTime(${batch.maxTimestamp}) AND batch_id = ${batch.id}), ` +
      `(SELECT count() FROM system.processes WHERE startsWith(query_id, 'anonymizer-batch-${batch.id}-')) ` +
      `FORMAT TabSeparated`;
    const text = await this.#client.query(sql, { signal, what: `check of batch ${batch.id}` });
    const [stored, running] = text.trim().split("\t").map(Number) as [number, number];
    return { stored, running: running > 0 };
  }

  /** Deletes every stored row of `batch`. */
  async repair(batch: BatchMeta, signal: AbortSignal): Promise<void> {
    await this.#client.query(
      `ALTER TABLE ${this.#database}.http_log DELETE WHERE batch_id = ${batch.id}`,
      { signal, what: `repair of batch ${batch.id}` },
    );
  }

  /** Maps a `ClickHouseError` to what the flusher does about it. */
  classify(error: unknown): SinkFailure | null {
    if (!(error instanceof ClickHouseError)) return null;
    return {
      outcome: error.outcome,
      // A refused connection is an outage, not a neighbour on the proxy's limit.
      rateLimited: error.outcome === "refused" && error.status === 503,
      bodyUnread: error.code === "body_rejected",
      retriable: error.retriable,
      status: error.status,
      serverCode: error.serverCode,
      error,
    };
  }

  #profile(): ServerProfile {
    if (this.#server === null) {
      throw new AnonymizerError(
        `Cannot write to ClickHouse at ${this.#client.url} as its version is not known yet`,
        { code: "server_version_unknown", retriable: true },
      );
    }
    return this.#server;
  }

  #strategy(server: ServerProfile): "check" | "token" {
    // Tokens need the tables' deduplication windows, which migrate sets on modern servers only.
    if (!server.modern) return "check";
    return this.#dedup === "auto" ? "token" : this.#dedup;
  }
}
