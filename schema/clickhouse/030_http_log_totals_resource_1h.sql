-- Traffic totals per hour and resource. Resource ids are close to unique per message, so any
-- finer grain, or HTTP status and cache status in the key, would make this table as large as
-- http_log; the hour grain still collapses repeat requests of popular resources. Keyed by
-- (hour, resource_id) alone, one hour holds one row per resource once merged (FINAL merges the
-- rest at read time), so the top resources of an hour need a scan but no GROUP BY, and one
-- resource is a short index range inside each hour.
-- The deduplication window lets a retried insert that carries insert_deduplication_token and
-- deduplicate_blocks_in_dependent_materialized_views = 1 fill a view write that failed, once.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{database}}.http_log_totals_resource_1h
(
    hour               DateTime /*+modern CODEC(DoubleDelta, LZ4) */,
    resource_id        UInt64 /*+modern CODEC(Delta, LZ4HC) */,
    requests           UInt64 /*+modern CODEC(T64, LZ4) */,
    bytes_sent         UInt64 /*+modern CODEC(T64, LZ4) */,
    request_time_milli UInt64 /*+modern CODEC(T64, LZ4) */
)
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, resource_id)
/*+modern SETTINGS non_replicated_deduplication_window = 1000 */
AS SELECT
    toStartOfHour(timestamp) AS hour,
    resource_id,
    count() AS requests,
    sum(bytes_sent) AS bytes_sent,
    sum(request_time_milli) AS request_time_milli
FROM {{database}}.http_log
GROUP BY hour, resource_id
