/**
 * anonymizer: consumes Cap'n Proto `HttpLogRecord` messages from Kafka, masks
 * the client address and stores every record exactly once in ClickHouse,
 * through a rate-limited proxy, with Deno KV as the durable batch queue.
 *
 * The path a record takes: {@linkcode KafkaSource} → {@linkcode decodeRecord}
 * → {@linkcode toRow} / {@linkcode anonymizeAddress} → {@linkcode KvQueue} →
 * {@linkcode Flusher} ({@linkcode packBatch}) → {@linkcode ClickHouseClient}.
 *
 * @example Mask an address
 * ```ts
 * import { anonymizeAddress } from "./mod.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(anonymizeAddress("1.2.3.4"), "1.2.3.X");
 * ```
 *
 * @module
 */
export * from "./lib/errors.ts";
export type * from "./lib/types.ts";
export * from "./lib/kafka_source.ts";
export * from "./lib/decode.ts";
export * from "./lib/encode_record.ts";
export * from "./lib/validate.ts";
export * from "./lib/anonymize.ts";
export * from "./lib/message_to_row.ts";
export * from "./lib/kv_queue.ts";
export * from "./lib/pacer.ts";
export * from "./lib/flusher.ts";
export * from "./lib/pack_batch.ts";
export * from "./lib/clickhouse_client.ts";
export * from "./lib/migrate.ts";
export * from "./lib/config.ts";
export * from "./lib/service.ts";
export * from "./lib/metrics.ts";
export * from "./lib/observability_server.ts";
export * from "./lib/logging.ts";
export * from "./lib/dashboard_query.ts";
export * from "./lib/produce.ts";
export * from "./lib/synthetic_records.ts";
