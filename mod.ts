/**
 * anonymizer: consumes Cap'n Proto `HttpLogRecord` messages from Kafka, masks
 * the client address and stores every record exactly once in ClickHouse,
 * through a rate-limited proxy, with Deno KV as the durable batch queue.
 *
 * The path a record takes: {@linkcode KafkaSource} → {@linkcode decodeRecord}
 * → {@linkcode toRow} / {@linkcode anonymizeAddress} → {@linkcode KvQueue} →
 * {@linkcode Flusher} → {@linkcode ClickHouseSink} ({@linkcode packBatch}) →
 * {@linkcode ClickHouseClient}. The flusher knows the store only as a
 * {@linkcode Sink}.
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
export type * from "./lib/record/types.ts";
export type { KafkaSasl } from "./lib/source/kafka_client.ts";
export * from "./lib/source/kafka_source.ts";
export type * from "./lib/source/source_consumer.ts";
export * from "./lib/source/kafka_consumer.ts";
export * from "./lib/record/decode.ts";
export * from "./lib/record/validate.ts";
export * from "./lib/record/anonymize.ts";
export * from "./lib/record/message_to_row.ts";
export * from "./lib/queue/kv_queue.ts";
export * from "./lib/pacer.ts";
export * from "./lib/slot_schedule.ts";
export * from "./lib/source/slot_yields.ts";
export * from "./lib/flusher.ts";
export * from "./lib/sink/sink.ts";
export * from "./lib/sink/clickhouse/clickhouse_sink.ts";
export * from "./lib/sink/clickhouse/pack_batch.ts";
export * from "./lib/sink/clickhouse/clickhouse_client.ts";
export * from "./lib/sink/clickhouse/migrate.ts";
export * from "./lib/config.ts";
export * from "./lib/settings.ts";
export * from "./lib/host_port.ts";
export * from "./lib/service.ts";
export * from "./lib/metrics.ts";
export * from "./lib/observability_server.ts";
export * from "./lib/status.ts";
export * from "./lib/logging.ts";
