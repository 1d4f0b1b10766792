-- Traffic totals per hour by resource, anonymized client network (a.b.c.X), HTTP status and cache
-- status: the table that answers a resource combined with any other dimension. The resource leads
-- the key, so one resource over a time range is one index range per part. Resource ids are close
-- to unique per message, so this table keeps nearly a row per raw row; it stores no URL, and its
-- sorted numeric and low-cardinality columns compress to a fraction of http_log, which the
-- combinations would otherwise scan over every hour of the range.
-- The deduplication window lets a retried insert that carries insert_deduplication_token and
-- deduplicate_blocks_in_dependent_materialized_views = 1 fill a view write that failed, once.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{database}}.http_log_totals_resource_ip_1h
(
    resource_id        UInt64 /*+modern CODEC(Delta, ZSTD(1)) */,
    hour               DateTime /*+modern CODEC(DoubleDelta, ZSTD(1)) */,
    remote_addr        String /*+modern CODEC(ZSTD(1)) */,
    response_status    UInt16,
    cache_status       LowCardinality(String),
    requests           UInt64 /*+modern CODEC(T64, ZSTD(1)) */,
    bytes_sent         UInt64 /*+modern CODEC(T64, ZSTD(1)) */,
    request_time_milli UInt64 /*+modern CODEC(T64, ZSTD(1)) */
)
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (resource_id, hour, remote_addr, response_status, cache_status)
/*+modern SETTINGS non_replicated_deduplication_window = 1000 */
AS SELECT
    resource_id,
    toStartOfHour(timestamp) AS hour,
    remote_addr,
    response_status,
    cache_status,
    count() AS requests,
    sum(bytes_sent) AS bytes_sent,
    sum(request_time_milli) AS request_time_milli
FROM {{database}}.http_log
GROUP BY resource_id, hour, remote_addr, response_status, cache_status
