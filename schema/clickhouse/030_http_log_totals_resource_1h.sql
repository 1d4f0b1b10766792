-- Traffic totals per hour by resource, HTTP status and cache status. Resource ids are close to
-- unique per message, so a minute grain would be as large as http_log; the hour grain still
-- collapses repeat requests of popular resources. Time leads the key so that the top resources of
-- a time range read only that range, and one resource is a short index range inside each hour.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{database}}.http_log_totals_resource_1h
(
    hour               DateTime /*+modern CODEC(DoubleDelta, ZSTD(1)) */,
    resource_id        UInt64 /*+modern CODEC(Delta, ZSTD(1)) */,
    response_status    UInt16,
    cache_status       LowCardinality(String),
    requests           UInt64 /*+modern CODEC(T64, ZSTD(1)) */,
    bytes_sent         UInt64 /*+modern CODEC(T64, ZSTD(1)) */,
    request_time_milli UInt64 /*+modern CODEC(T64, ZSTD(1)) */
)
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, resource_id, response_status, cache_status)
/*+modern SETTINGS non_replicated_deduplication_window = 1000 */
AS SELECT
    toStartOfHour(timestamp) AS hour,
    resource_id,
    response_status,
    cache_status,
    count() AS requests,
    sum(bytes_sent) AS bytes_sent,
    sum(request_time_milli) AS request_time_milli
FROM {{database}}.http_log
GROUP BY hour, resource_id, response_status, cache_status
