/**
 * anonymizer: consumes Cap'n Proto `HttpLogRecord` messages from Kafka, masks
 * the client address and stores every record exactly once in ClickHouse,
 * through a rate-limited proxy, with Deno KV as the durable batch queue.
 *
 * @module
 */
export * from "./lib/errors.ts";
export type * from "./lib/types.ts";
