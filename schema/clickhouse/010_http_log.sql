-- The raw access log. One row per Kafka message that passed validation.
-- batch_id ties each row to the sealed batch that carried it, so an INSERT whose
-- outcome is unknown can be resolved with one SELECT (see README, Delivery guarantees).
-- Partitions are UTC days, and anonymizer never mixes two days in one INSERT, so an INSERT
-- writes exactly one part and cannot partly succeed.
CREATE TABLE IF NOT EXISTS {{database}}.http_log
(
    timestamp          DateTime /*+modern CODEC(Delta, ZSTD(3)) */,
    resource_id        UInt64 /*+modern CODEC(ZSTD(3)) */,
    bytes_sent         UInt64 /*+modern CODEC(ZSTD(3)) */,
    request_time_milli UInt64 /*+modern CODEC(ZSTD(3)) */,
    response_status    UInt16,
    cache_status       LowCardinality(String),
    method             LowCardinality(String),
    remote_addr        String /*+modern CODEC(ZSTD(3)) */,
    url                String /*+modern CODEC(ZSTD(3)) */,
    batch_id           UInt64 /*+modern CODEC(ZSTD(3)) */
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(timestamp, 'UTC')
ORDER BY (timestamp, resource_id)
/*+modern SETTINGS non_replicated_deduplication_window = 1000 */
